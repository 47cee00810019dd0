"""CE: see method.py."""

from __future__ import annotations

from kdray.methods.ce.method import CE

__all__ = ["CE"]
