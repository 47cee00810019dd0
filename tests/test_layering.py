"""Import rules: kdray's layers, bottom-up, with no upward import and no import cycle anywhere.

Every import counts, late ones inside functions too; only `if TYPE_CHECKING:` blocks are skipped
(annotations only). ``from pkg import name`` counts as an import of the submodule ``pkg.name``
when that module exists. The package root ``kdray/__init__.py`` is the facade on top (it imports
the methods so that they register). See docs/README.md for the layer picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EDGE = {"ray", "optuna", "mlflow"}

# Bottom first. A module may import modules of a lower rank, or of its own unit (the same
# sub-package, e.g. kdray.data.* among themselves); nothing of a higher rank.
RANKS: dict[str, int] = {
    "kdray.checks": 0, "kdray.types": 0, "kdray.dist": 0, "kdray.schedules": 0, "kdray.search": 0,
    "kdray.registry": 1, "kdray.checkpoint": 1,
    "kdray.overrides": 2, "kdray.modules": 2,
    "kdray.config": 3, "kdray.methods": 3,
    "kdray.data": 4,
    "kdray.eval": 5,
    "kdray.engine": 6,
    "kdray.presets": 7, "kdray.study": 7,
    "kdray.ledger": 7.5,  # reads the presets (paper cells -> preset rows); runtime reads MLflow
    "kdray.runtime": 8,
    "kdray.cli_studies": 8.5,  # `kdray study`: finds and runs the study scripts
    "kdray.cli": 9,
    "kdray": 10,
}
# What a method may import from kdray (besides torch, timm, numpy and the standard library).
METHOD_DEPS = {"kdray.modules", "kdray.types", "kdray.checks", "kdray.registry", "kdray.search",
               "kdray.schedules", "kdray.dist", "kdray.checkpoint", "kdray.methods.base"}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph(root: Path, package: str = "kdray") -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (TYPE_CHECKING blocks excluded)."""
    files = {module_name(root, p): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == package}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != package:
                    continue
                subs = {f"{node.module}.{a.name}" for a in node.names}
                found = subs & files.keys()
                deps |= found or {node.module}
                if found != subs:
                    deps.add(node.module)
        deps.discard(mod)
        graph[mod] = {d for d in deps if d in files}
    return graph


def rank(mod: str) -> tuple[int, str]:
    """(rank, unit) of a module: the longest RANKS prefix that names it."""
    best = max((k for k in RANKS if mod == k or mod.startswith(k + ".")), key=len)
    return RANKS[best], best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        r, unit = rank(mod)
        for d in deps:
            rd, unit_d = rank(d)
            if rd > r or (rd == r and unit_d != unit):
                bad.append(f"{mod} -> {d}")
    return sorted(bad)


def method_violations(graph: dict[str, set[str]]) -> list[str]:
    """Methods import only shared low layers and their own package, never another method."""
    bad = []
    for mod, deps in graph.items():
        parts = mod.split(".")
        if parts[:2] != ["kdray", "methods"] or len(parts) < 3 or parts[2] == "base":
            continue
        own = ".".join(parts[:3])
        for d in deps:
            ok = d == own or d.startswith(own + ".") or any(
                d == a or d.startswith(a + ".") for a in METHOD_DEPS)
            if not ok:
                bad.append(f"{mod} -> {d}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_upward_import():
    graph = import_graph(REPO)
    assert len(graph) > 50
    assert upward_imports(graph) == []


def test_no_import_cycle():
    assert cycles(import_graph(REPO)) == []


def test_methods_import_no_other_method_and_no_upper_layer():
    assert method_violations(import_graph(REPO)) == []


def test_every_module_has_a_layer():
    for mod in import_graph(REPO):
        rank(mod)  # raises ValueError (max of nothing) for a module outside every layer


@pytest.mark.parametrize("planted, finder", [
    ("from kdray.engine.loop import fit\n", upward_imports),          # modules -> engine
    ("def f():\n    import kdray.data\n", upward_imports),             # a late upward import
    ("from kdray.methods import other\n", method_violations),          # a method -> another
])
def test_the_checks_catch_a_planted_violation(tmp_path, planted, finder):
    """The rules fail on what they forbid (a checker that cannot fail proves nothing)."""
    files = {
        "kdray/__init__.py": "", "kdray/modules/__init__.py": "", "kdray/data/__init__.py": "",
        "kdray/engine/__init__.py": "", "kdray/engine/loop.py": "def fit(): ...\n",
        "kdray/methods/__init__.py": "", "kdray/methods/other/__init__.py": "",
        "kdray/methods/mine/__init__.py": "",
    }
    target = "kdray/methods/mine/__init__.py" if finder is method_violations \
        else "kdray/modules/__init__.py"
    files[target] = planted
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert finder(import_graph(tmp_path)) != []


def test_a_planted_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


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
    files = list((REPO / "kdray" / "methods").rglob("*.py"))
    assert len(files) > 10
    for f in files:
        assert not (_imports(f) & (EDGE | {"torch.distributed"})), f
        assert ".cuda(" not in f.read_text(), f"{f} moves tensors itself"
