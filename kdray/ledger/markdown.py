"""The ledger as Markdown (results/LEDGER.md), from the lines `kdray.ledger.render` builds:
one table per study, carried lines shown as the previous ledger.csv had them."""

from __future__ import annotations

from kdray.ledger.cells import Cell
from kdray.ledger.flops import ASSUMPTION
from kdray.ledger.render import (
    STATUSES,
    TOLERANCE,
    CarriedTier,
    Line,
    _facts,
    _setting,
    _tier_names,
    _tier_text,
)


def _paper_text(cell: Cell) -> str:
    if cell.value is None:
        return "not retrieved"
    pm = f" ± {cell.pm:g} ({cell.pm_kind})" if cell.pm is not None else ""
    return f"{cell.value:g}{pm}"


def _carried_md(ln: Line) -> tuple[list[str], str, str, str, str, str, str]:
    """(tier texts, Δ, status, cost, commits, config hashes, runs) of a carried line."""
    k = ln.carried or {}
    tiers = []
    for t in ("smoke", "mini", "preset"):
        n, mean, std = k.get(f"{t}_n", "0"), k.get(f"{t}_mean", ""), k.get(f"{t}_std", "")
        text = "–" if n in ("", "0") or not mean else _tier_text(
            float(mean), float(std) if std else None, int(n), same_setting=True)
        tiers.append(f"{ln.cell.preset}: {text}" if t == "preset" else text)
    delta = f"{float(k['delta']):+.2f}" if k.get("delta") else "–"
    status = (k.get("status") or "not run") + (
        f" ({k['compared_tier']})" if k.get("compared_tier") else "") + " [carried]"
    cost = "; ".join(x for x in (k.get("compute"), k.get("estimate")) if x) or "–"
    runs = ", ".join(f"`{i[:8]}`" for i in (k.get("mlflow_run_ids") or "").split(";") if i)
    return (tiers, delta, status, cost, k.get("commits") or "–", k.get("config_hashes") or "–",
            runs or "–")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_md(lines: list[Line], sources: list[str] | None = None) -> str:
    """The ledger as Markdown; `sources`: what its runs were read from (MLflow stores, the
    previous ledger's runs file), as shown."""
    counts = {s: sum(1 for ln in lines if ln.status == s) for s in STATUSES}
    stores = ("the MLflow store alone" if not sources or len(sources) == 1 else
              f"{len(sources)} sources (" + ", ".join(f"`{x}`" for x in sources) + ")")
    held = sum(ln.carried is not None for ln in lines)
    tiers = sum(isinstance(t, CarriedTier) for ln in lines for t in ln.tiers.values())
    carried = ([f"- [carried]: {held} lines and {tiers} tiers of rebuilt lines kept as the "
                "previous ledger.csv had them: their studies (tiers) have no run in any source "
                "read now (rerun the study, or give its store, to rebuild them); a carried "
                "tier's runs are not listed."] if held or tiers else [])
    out = ["# Reproduction ledger", "",
           f"Written by `kdray ledger` from {stores} (rerun it to refresh; the file "
           "is sorted and has no timestamps). One line per paper cell and study row aimed at it "
           "(paper cells: `kdray/ledger/paper_cells.json`).", "",
           "- ours: mean ± sample std over seeds (n seeds; the newest finished run of each seed) "
           "of the row's metric (`test/...`, else `val/...`), per tier: `smoke`, `mini` and the "
           "paper preset. Tiers run on another dataset or architecture are marked "
           "[other setting] and never compared with the paper.",
           f"- status: about the fullest tier that ran; `within` the paper's std/CI (±"
           f"{TOLERANCE} pt where it gives none), `gap`, `other setting`, `no paper value`, "
           "`not run`. Δ = ours - paper.",
           "- compute: device-hours of the runs listed (MLflow wall time x devices from the "
           "run's params and environment.json: GPUs by name, else CPU cores).",
           f"- estimates (cells whose preset has not run): torch.utils.flop_counter FLOPs of one training step "
           f"(student forward+backward, teacher forward, every view; method heads, stages and "
           f"evaluation excluded) scaled to the preset's batch and steps, at {ASSUMPTION}; "
           f"per seed.", *carried, "",
           "Summary: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES), ""]
    studies: dict[str, list[Line]] = {}
    for ln in lines:
        studies.setdefault(ln.cell.study, []).append(ln)
    for study, group in studies.items():
        names = sorted({f"{study}_{t}" for ln in group for t in _tier_names(ln.cell)})
        out += [f"## {study}", "", "".join(f'<a id="{n}"></a>' for n in names), "",
                "| cell | paper (table, row, column) | setting | our row | paper | smoke | mini | "
                "preset | Δ | status | compute / estimate | commit | config | MLflow runs |",
                "|---" * 14 + "|"]
        for ln in group:
            c = ln.cell
            if ln.carried is not None:
                tiers, delta, status, cost, commits, hashes, runs = _carried_md(ln)
                out.append("| " + " | ".join(_md(x) for x in (
                    c.id, f"{c.paper.split(',')[0]}, {c.table}, {c.row}, {c.column}",
                    _setting(c), ln.row, _paper_text(c), *tiers, delta, status, cost, commits,
                    hashes)) + f" | {runs} |")
                continue
            compute, commits, hashes, ids = _facts(ln)
            tiers = [ln.tiers[t].text() if t in ln.tiers else "–" for t in ("smoke", "mini")]
            own = ln.tiers.get(c.preset)
            tiers.append(f"{c.preset}: {own.text() if own else '–'}")
            est = (ln.estimate.label() if ln.estimate else "no estimate: preset not found"
                   if c.preset not in ln.tiers else "")
            cost = "; ".join(x for x in (compute, est) if x) or "–"
            delta = f"{ln.delta:+.2f}" if ln.delta is not None else "–"
            status = ln.status + (f" ({ln.compared})" if ln.compared else "")
            runs = ", ".join(f"`{i[:8]}`" for i in ids) or "–"
            out.append("| " + " | ".join(_md(x) for x in (
                c.id, f"{c.paper.split(',')[0]}, {c.table}, {c.row}, {c.column}", _setting(c),
                ln.row, _paper_text(c), *tiers, delta, status, cost, commits or "–",
                hashes or "–")) + f" | {runs} |")
        out.append("")
    return "\n".join(out)
