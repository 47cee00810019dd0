"""Sentences about a study from its plan (plain text, no Ray): which splits it scores and
selects on (`split_note`, `val_source`: the results table, its header and the MLflow note) and
what it will run (`study_cost`: the console)."""

from __future__ import annotations

from kdray.study.spec import BEST_LABEL, ROW_KEY, Study


def val_source(study: Study) -> str:
    """Where the val split searched trials are scored on comes from."""
    from kdray.data.base import HOLDOUT_FRACTION
    from kdray.data.coco import SPECS as DETECTION
    from kdray.data.registry import CARVED_VAL

    ds = study.base.data.dataset
    if ds not in CARVED_VAL:
        return f"the val split of {ds}"
    share = "of the training images" if ds in DETECTION else "of each class"
    return (f"{ds} has no val split apart from the reported one: val is carved from train, a "
            f"fixed {HOLDOUT_FRACTION:.0%} {share}, which searched trials and the stages they "
            "start from do not train on")


def split_note(study: Study) -> str:
    """The split the rows are scored on and, when the study searches, what it searches and
    selects on: from the plan, not the preset's prose, so `--no-search` cannot leave a search
    described."""
    split = study.base.eval.split
    if not study.space:
        return f"Rows are scored on {split}; no search."
    kind = {"optuna": "TPE (Optuna)", "random": "random"}.get(study.search, study.search)
    stop = "scored, stopped (ASHA)" if study.scheduler == "asha" else "scored"
    keys = ", ".join(k.split(".")[-1] for k in study.space)
    return (f"A {kind} search over {keys} on top of the last row: {study.num_samples} trials, "
            f"{stop} and selected on val only ({val_source(study)}). Rows and '{BEST_LABEL}' "
            f"(the val-selected point re-run with every seed) are scored on {split}.")


def paragraph(study: Study) -> str:
    """The study's description followed by `split_note`: the results table's first paragraph
    and the head of the study run's MLflow note."""
    return f"{study.description} {split_note(study)}".strip()


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
