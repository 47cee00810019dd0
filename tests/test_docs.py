"""Every section reference in the code ("docs/<page>.md §<n>") resolves to a heading of that page,
and no reference points at notes outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REF = re.compile(r"(docs/[\w/]+\.md) §([A-Z]?[\d.]*\d|[A-Z]\.\d+)")


def _sources() -> list[Path]:
    files = [REPO / "README.md"]
    for d in ("kdray", "studies", "bench", "tests", "clusters"):
        files += [p for p in (REPO / d).rglob("*") if p.suffix in (".py", ".yaml", ".md")]
    return files


def test_every_section_reference_resolves():
    seen, bad = 0, []
    for f in _sources():
        for page, sec in REF.findall(f.read_text()):
            seen += 1
            text = (REPO / page).read_text() if (REPO / page).is_file() else ""
            if not re.search(rf"^#+ +§?{re.escape(sec)}\b", text, re.M):
                bad.append(f"{f.relative_to(REPO)}: {page} §{sec}")
    assert seen > 20
    assert bad == []


def test_no_reference_to_notes_outside_the_repository():
    old = re.compile(r"(?<!docs/)(?<!/)methods\.md|pitfalls(\.md)? ?P\d")
    bad = [str(f.relative_to(REPO)) for f in _sources()
           if f.name != "test_docs.py" and old.search(f.read_text())]
    assert bad == []
