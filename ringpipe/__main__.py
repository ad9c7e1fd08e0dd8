"""``python -m ringpipe`` is the ``ringpipe`` command."""

from ringpipe.process.cli import main

raise SystemExit(main())
