"""MKD: see method.py."""

from __future__ import annotations

from kdray.methods.mkd.method import MKD

__all__ = ["MKD"]
