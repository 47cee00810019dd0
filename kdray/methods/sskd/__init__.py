"""SSKD: see method.py."""

from __future__ import annotations

from kdray.methods.sskd.method import SSKD
from kdray.methods.sskd.teacher import SSKDTeacher

__all__ = ["SSKD", "SSKDTeacher"]
