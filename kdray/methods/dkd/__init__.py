"""DKD: see method.py."""

from __future__ import annotations

from kdray.methods.dkd.method import DKD

__all__ = ["DKD"]
