"""Sentences about a study, for its description and the console: which splits it scores and
selects on (`split_note`) and what it will run (`study_cost`). Plain text from the plan; no Ray."""

from __future__ import annotations

from kdray.study.spec import BEST_LABEL, ROW_KEY, Study


def split_note(study: Study) -> str:
    """A sentence for the results table, from the plan (not the preset's prose, so `--no-search`
    cannot leave a search described): the split the rows are scored on and, when the study
    searches, what it searches and selects on."""
    from kdray.data.base import HOLDOUT_FRACTION
    from kdray.data.coco import SPECS as DETECTION
    from kdray.data.registry import CARVED_VAL

    base = study.base
    if not study.space:
        return f"Rows are scored on {base.eval.split}; no search."
    ds = base.data.dataset
    share = "of the training images" if ds in DETECTION else "of each class"
    carved = (f" ({ds} has no val split apart from the reported one: val is carved from train, a "
              f"fixed {HOLDOUT_FRACTION:.0%} {share}, which searched trials and the stages they "
              "start from do not train on)") if ds in CARVED_VAL else ""
    keys = ", ".join(k.split(".")[-1] for k in study.space)
    return (f"Then a TPE search (Optuna, ASHA stopping) over {keys}: {study.num_samples} trials, "
            f"scored, stopped and selected on val only{carved}. Rows and '{BEST_LABEL}' (the "
            f"val-selected point re-run with every seed) are scored on {base.eval.split}.")


def study_cost(study: Study) -> str:
    """A rough cost of the study, counted from its plan (no measurement): trials, epochs each and
    what one trial holds, e.g. "8 trials (5 rows x 1 seed, 2 searched, 1 val-selected x 1 seed),
    2 epochs each; a trial: 1 worker x 1 CPU". Stages (teachers, phase 1) come on top."""
    seeds = len(study.seeds)
    grid = len(study.rows) * seeds if (study.rows or not study.space) else 0
    parts = []
    if grid:
        parts.append(f"{len(study.rows)} rows x {seeds} seed{'s' * (seeds > 1)}"
                     if study.rows else f"{seeds} seed{'s' * (seeds > 1)}")
    searched = study.num_samples if study.space else 0
    if searched:
        parts.append(f"{searched} searched")
        parts.append(f"1 val-selected x {seeds} seed{'s' * (seeds > 1)}")
    total = grid + searched + (seeds if searched else 0)
    r = study.base.resources
    device = (f"{r.gpus_per_worker:g} GPU" if r.gpus_per_worker > 0
              else f"{r.cpus_per_worker} CPU")
    return (f"{total} trials ({', '.join(parts)}), {_lengths(study)}; "
            f"a trial: {r.num_workers} worker{'s' * (r.num_workers > 1)} x {device}")


def _lengths(study: Study) -> str:
    """"2 epochs each", or with rows of their own length "2 epochs each ('CE row': 6)"."""
    base = study.base.train.epochs
    own = [f"'{row.label}': {n}" for row in study.rows
           if (n := study.trial_epochs({ROW_KEY: row.label})) != base]
    return f"{base} epochs each" + (f" ({', '.join(own)})" if own else "")
