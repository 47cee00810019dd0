"""KD: see method.py."""

from __future__ import annotations

from kdray.methods.kd.method import KD

__all__ = ["KD"]
