"""Pipeline stages that later trials depend on (a teacher, a phase-1 model): run once, reuse.

A stage is one `fit` with a stable run name; its final checkpoint path and metrics are recorded in
`<storage>/stages/<name>.json`, so re-running a study (or `--resume`) reuses a finished stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdray.checkpoint import CKPT_NAME
from kdray.config import ExperimentConfig

if TYPE_CHECKING:
    from kdray.runtime.study import Study

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    checkpoint: str          # path of checkpoint.pt
    metrics: dict[str, float]
    mlflow_run_id: str | None
    reused: bool


def run_stage(cfg: ExperimentConfig, name: str, *, storage_path: str | None = None,
              tracking_uri: str | None = None, experiment: str = "kdray",
              address: str | None = None, parent_run_id: str | None = None) -> StageResult:
    """Train `cfg` as stage `name` unless a finished record of the same config exists."""
    from kdray.runtime.fit import fit

    storage_path = storage_path or os.environ.get("KDRAY_STORAGE_PATH") or "ray_results"
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)
    # the record sits beside local storage; with remote storage (s3://) it stays in ./.kdray/
    base = storage_path if "://" not in storage_path else os.path.abspath(".kdray")
    record = os.path.join(base, "stages", f"{name}.json")
    if os.path.isfile(record):
        with open(record) as f:
            rec = json.load(f)
        if rec.get("config") == cfg.to_dict() and os.path.isfile(rec["checkpoint"]):
            log.info("stage %s: reusing %s", name, rec["checkpoint"])
            print(f"[kdray] stage {name}: reusing finished checkpoint {rec['checkpoint']}")
            return StageResult(rec["checkpoint"], rec["metrics"], rec.get("mlflow_run_id"), True)
    # The run folder is keyed by the config: an interrupted stage resumes its own checkpoints,
    # a stage whose config changed starts afresh instead of resuming the old run's.
    key = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    run_name = f"{name}-{key.hexdigest()[:8]}"
    print(f"[kdray] stage {name}: training {cfg.method} {cfg.model.arch} on {cfg.data.dataset} "
          f"for {cfg.train.epochs} epochs ({run_name})")
    res = fit(cfg, run_name=run_name, storage_path=storage_path, tracking_uri=tracking_uri,
              experiment=experiment, address=address, parent_run_id=parent_run_id)
    ckpt = os.path.join(res.checkpoint_path, CKPT_NAME)
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record, "w") as f:
        json.dump({"checkpoint": ckpt, "metrics": res.metrics, "config": cfg.to_dict(),
                   "mlflow_run_id": res.mlflow_run_id}, f, indent=2)
    return StageResult(ckpt, res.metrics, res.mlflow_run_id, False)


def study_stage(study: Study, args: Any, cfg: ExperimentConfig, suffix: str) -> StageResult:
    """`run_stage` from a study's `before` hook: stage "<study>-<suffix>", tracked in the study's
    MLflow experiment, stored and run where the study's flags (`args`) say."""
    return run_stage(cfg, f"{study.name}-{suffix}", storage_path=args.storage_path,
                     tracking_uri=args.tracking_uri, experiment=study.name, address=args.address)
