"""Helpers shared by test files (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_study(name: str) -> ModuleType:
    """studies/<name>.py as a module (the study scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "studies" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
