"""ringpipe: an HTTP pipe that streams bytes from one producer to many readers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
