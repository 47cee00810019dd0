"""M2SD: see method.py."""

from __future__ import annotations

from kdray.methods.m2sd.method import M2SD

__all__ = ["M2SD"]
