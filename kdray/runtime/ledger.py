"""`kdray ledger`: the reproduction ledger read from MLflow alone. Every study parent run (tag
`kdray.role=study`) and its finished grid trials (child runs) become run records for
`kdray.ledger.render`; results/LEDGER.md and results/ledger.csv are written from them."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from kdray.ledger import carry
from kdray.ledger.cells import Cell, load_cells
from kdray.ledger.flops import estimate
from kdray.ledger.markdown import render_md
from kdray.ledger.render import build_lines, render_csv
from kdray.runtime.mlflow_store import (
    TAG_GIT,
    TAG_PARENT,
    TAG_ROLE,
    TAG_RUN_KEY,
    TAG_STUDY,
    default_tracking_uri,
)

TAG_ROW = "kdray.row"  # the row label, when a run carries it; else read from the run name
_TRIAL_TAIL = re.compile(r"-t\d+(-s[^-]*)?$")


def _safe(label: str) -> str:
    """A row label as `kdray.study.spec.trial_name` writes it into run names."""
    return label.replace(" ", "_").replace("/", "_")


def _all_runs(client: MlflowClient, experiment_id: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _devices(client: MlflowClient, run) -> dict[str, Any]:
    """GPUs (by name) or CPU cores of a run: its resources.* params, with environment.json's
    world size and CUDA device names where the run logged it."""
    p = run.data.params
    env: dict[str, Any] = {}
    try:
        with open(client.download_artifacts(run.info.run_id, "environment.json")) as f:
            env = json.load(f)
    except Exception:  # no artifact (e.g. a run logged by hand): params alone
        env = {}
    world = int(env.get("world_size") or p.get("resources.num_workers") or 1)
    gpus = float(p.get("resources.gpus_per_worker") or 0)
    names = env.get("cuda_devices") or []
    if gpus > 0 and names:
        return {"kind": "GPU", "count": max(1, round(world * gpus)), "name": str(names[0])}
    return {"kind": "CPU", "count": world * int(float(p.get("resources.cpus_per_worker") or 1)),
            "name": ""}


def _row_of(run, labels: dict[str, str]) -> str | None:
    tags = run.data.tags
    if tags.get(TAG_ROW):
        return tags[TAG_ROW]
    name = _TRIAL_TAIL.sub("", run.info.run_name or tags.get("mlflow.runName", ""))
    return labels.get(name)


def read_runs(tracking_uri: str, cells: list[Cell]) -> list[dict[str, Any]]:
    """Run records of every finished grid trial of every kdray study in the store."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri)
    labels = {_safe(r): r for c in cells for r in c.rows}
    records = []
    experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    for exp in sorted(experiments, key=lambda e: e.experiment_id):
        runs = _all_runs(client, exp.experiment_id)
        parents = {r.info.run_id: r.data.tags[TAG_STUDY] for r in runs
                   if r.data.tags.get(TAG_ROLE) == "study" and r.data.tags.get(TAG_STUDY)}
        for run in runs:
            tags = run.data.tags
            study = parents.get(tags.get(TAG_PARENT, ""))
            if (study is None or tags.get(TAG_ROLE) != "trial" or run.info.status != "FINISHED"
                    or "/grid/" not in tags.get(TAG_RUN_KEY, "")):
                continue
            row = _row_of(run, labels)
            if row is None:
                continue
            end = run.info.end_time or run.info.start_time
            records.append({
                "run_id": run.info.run_id, "study": study, "row": row,
                "seed": run.data.params.get("seed", "0"), "metrics": dict(run.data.metrics),
                "params": dict(run.data.params), "commit": tags.get(TAG_GIT, ""),
                "wall_s": max(0, end - run.info.start_time) / 1000.0,
                "devices": _devices(client, run), "start_time": run.info.start_time})
    return sorted(records, key=lambda r: (r["study"], r["row"], str(r["seed"]), r["run_id"]))


def write_ledger(tracking_uri: str | list[str] | None = None, out_dir: str = "results",
                 cells: list[Cell] | None = None) -> tuple[str, str]:
    """Write `<out_dir>/LEDGER.md` and `<out_dir>/ledger.csv` from one MLflow store or several
    (studies run in different stores, e.g. one per machine; a run found twice counts once) and
    from the runs of the ledger already there (`<out_dir>/ledger_runs.jsonl`, rewritten with
    every run used); lines of studies with no run at all stay as the previous ledger.csv had
    them (`kdray.ledger.carry`). Return the paths of LEDGER.md and ledger.csv."""
    cells = load_cells() if cells is None else cells
    from kdray.runtime.study_report import portable_uri

    uris = ([tracking_uri] if isinstance(tracking_uri, str) else list(tracking_uri or [])
            or [default_tracking_uri()])
    md, csv_path = os.path.join(out_dir, "LEDGER.md"), os.path.join(out_dir, "ledger.csv")
    runs_path = os.path.join(out_dir, carry.RUNS_FILE)
    seen: dict[str, dict[str, Any]] = {}
    for uri in uris:
        for r in read_runs(uri, cells):
            seen.setdefault(r["run_id"], carry.slim(r))
    kept = [r for r in carry.read_runs(runs_path) if r["run_id"] not in seen]
    for r in kept:  # the previous ledger's runs: a store read now wins
        seen[r["run_id"]] = r
    runs = sorted(seen.values(), key=lambda r: (r["study"], r["row"], str(r["seed"]), r["run_id"]))
    lines = carry.carry(build_lines(cells, runs, estimate=estimate), runs,
                        carry.read_previous(csv_path))
    sources = [portable_uri(u, keep_folder=True) for u in uris]
    if kept:
        sources.append(f"{len(kept)} earlier runs from {carry.RUNS_FILE}")
    os.makedirs(out_dir, exist_ok=True)
    with open(md, "w", encoding="utf-8") as f:
        f.write(render_md(lines, sources))
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        f.write(render_csv(lines))
    carry.write_runs(runs_path, runs)
    return md, csv_path
