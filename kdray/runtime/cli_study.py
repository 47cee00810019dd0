"""Shared command line of every `studies/*.py` script."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from kdray.checks import user_error_exit
from kdray.config import parse_overrides
from kdray.study.spec import Study, with_resources


def seed_list(text: str) -> tuple[int, ...]:
    """argparse type of --seeds: comma-separated whole numbers >= 0."""
    try:
        seeds = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 0, e.g. 0,1,2; got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is repeated in {text!r}")
    return seeds


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value
    parse.__name__ = f"whole number >= {low}"
    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def study_parser(description: str, presets: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", default=presets[0], choices=presets)
    p.add_argument("--address", default=None, help="Ray address (default: local Ray in-process)")
    p.add_argument("--workers-per-trial", type=_count(1), default=None,
                   help="DDP workers per trial")
    p.add_argument("--gpus-per-worker", type=_number, default=None)
    p.add_argument("--cpus-per-worker", type=_count(0), default=None)
    p.add_argument("--num-samples", type=_count(0), default=None, help="searched trials")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="comma-separated seeds for the ablation rows, e.g. 0,1,2")
    p.add_argument("--data-root", default=None, help="where datasets are looked for")
    p.add_argument("--download", action="store_true",
                   help="download missing datasets where torchvision can (CIFAR, Omniglot)")
    p.add_argument("--tracking-uri", default=None, help="MLflow (default sqlite:///./mlflow.db)")
    p.add_argument("--storage-path", default=None, help="Ray storage (default ./ray_results)")
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="Optuna study storage (default $KDRAY_OPTUNA_STORAGE, else optuna.db "
                        "beside a sqlite MLflow store, else ./optuna.db; 'none': in memory)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study (and its Optuna study)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--no-search", action="store_true", help="run the ablation rows only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key of every trial")
    p.add_argument("--debug", action="store_true", help="on a user error, print the traceback too")
    return p


def main(build: Callable[[str], Study], description: str, presets: list[str],
         argv: list[str] | None = None, before: Callable[[Study, argparse.Namespace], Study]
         | None = None):
    """Parse flags, build the preset's Study, apply overrides, check every config it can run
    (rows x seeds, search corners, data, resources, locations) before any stage or Ray starts,
    run the `before` hook (stages), run the study. A user mistake exits 2 with one message."""
    args = study_parser(description, presets).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = []
    try:
        code = user_error_exit(lambda: result.append(_run(build, args, before)) or 0, args.debug)
    except KeyboardInterrupt as e:  # StudyInterrupted: the records are final; nothing to print
        from kdray.runtime.interrupts import INTERRUPTED_EXIT

        print(f"interrupted: {e}", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None
    if code:
        raise SystemExit(code)
    return result[0]


def _run(build, args, before):
    from dataclasses import replace

    from kdray.runtime.tune import check_study, run_study

    study = build(args.preset)
    over = parse_overrides(args.set)
    if args.data_root:
        over["data.root"] = args.data_root
    if args.download:
        over["data.download"] = True
    if over:
        study = replace(study, base=study.base.override(over))
    study = with_resources(study, workers_per_trial=args.workers_per_trial,
                           gpus_per_worker=args.gpus_per_worker,
                           cpus_per_worker=args.cpus_per_worker,
                           num_samples=args.num_samples, seeds=args.seeds)
    if args.no_search:
        study = replace(study, space={})
    # everything that does not depend on a stage's output, before any stage runs
    check_study(study, address=args.address, storage_path=args.storage_path,
                tracking_uri=args.tracking_uri, results_dir=args.results_dir,
                stages_pending=before is not None)
    if before is not None:
        study = before(study, args)
    return run_study(study, address=args.address, storage_path=args.storage_path,
                     tracking_uri=args.tracking_uri, resume=args.resume,
                     results_dir=args.results_dir, header={"preset": args.preset},
                     optuna_storage=args.optuna_storage)
