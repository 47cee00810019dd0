"""CSKD: see method.py."""

from __future__ import annotations

from kdray.methods.cskd.method import CSKD

__all__ = ["CSKD"]
