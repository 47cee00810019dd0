"""SMKD: see method.py."""

from __future__ import annotations

from kdray.methods.smkd.method import SMKD

__all__ = ["SMKD"]
