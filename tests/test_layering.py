"""Import rules (style.md §3): only kdray/runtime and studies/ import ray, optuna or mlflow."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EDGE = {"ray", "optuna", "mlflow"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_only_runtime_imports_ray_optuna_mlflow():
    offenders = []
    files = list((REPO / "kdray").rglob("*.py"))
    assert len(files) > 10
    for f in files:
        rel = f.relative_to(REPO)
        if rel.parts[1] == "runtime":
            continue
        bad = _imports(f) & EDGE
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, offenders


def test_method_files_are_plain_pytorch():
    for f in (REPO / "kdray" / "methods").glob("*.py"):
        assert not (_imports(f) & (EDGE | {"torch.distributed"})), f
        assert ".cuda(" not in f.read_text(), f"{f} moves tensors itself"
