"""``python -m ringpipe`` is the ``ringpipe`` command."""

from ringpipe.cli import main

raise SystemExit(main())
