"""One Tune trial of a study: what it runs (`trainable`) and what it holds (`trial_resources`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdray.study.spec import Study

log = logging.getLogger(__name__)
TRIAL_SLOT = "kd_trial_slot"  # custom resource: only on-demand nodes host trial drivers


def trainable(study: Study, phase: str, storage_path: str, tracking: dict[str, Any]):
    """The Tune function of phase `phase`: builds the trial's config from its parameters and its
    MLflow run name and tags, then trains it (one worker: in this process; more: a TorchTrainer
    driven from here)."""
    def run_trial(params: dict[str, Any]) -> None:
        from ray import tune

        from kdray.runtime.driver import loop_config, make_trainer, one_process
        from kdray.study.progress import run_name, run_tags, trial_index

        ctx = tune.get_context()
        cfg = study.trial_config(params)
        name = ctx.get_trial_name()
        tr = dict(tracking, run_key=f"{study.name}/{phase}/{ctx.get_trial_id()}",
                  run_name=run_name(phase, params, trial_index(name)),
                  tags=run_tags(phase, params, cfg))
        train_name = f"{study.name}-{phase}-{ctx.get_trial_id()}"
        if one_process(cfg):  # the worker body itself, in this trial (docs/runtime.md §13)
            from kdray.runtime.worker import train_fn_single

            train_fn_single(loop_config(cfg, tr, train_name, storage_path))
        else:                 # a DDP TorchTrainer driven from this trial
            make_trainer(cfg, run_name=train_name, storage_path=storage_path, tracking=tr,
                         in_tune=True).fit()
        log.info("trial %s finished", name)

    return run_trial


def trial_resources(study: Study, slot: bool):
    """What one trial holds: a one-worker trial trains itself, so it holds its worker's CPUs and
    GPUs; a DDP trial only drives its TorchTrainer (no CPU, the custom slot on clusters, §P3)."""
    from kdray.runtime.driver import one_process

    def resources(params: dict[str, Any]) -> dict[str, float]:
        cfg = study.trial_config(params)
        r = cfg.resources
        if one_process(cfg):
            return {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker}
        if slot:
            return {"cpu": 0, TRIAL_SLOT: 1}
        return {"cpu": 0, "memory": 256 * 1024**2}

    return resources
