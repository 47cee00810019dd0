"""Shared command line of every `studies/*.py` script."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from kdray.checks import user_error_exit
from kdray.config import ConfigError, parse_overrides
from kdray.study.describe import study_cost
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


@dataclass
class StudyInfo:
    """What a study script passes to `main`: read by `kdray study --list` without running it."""

    build: Callable[[str], Study]
    description: str
    presets: list[str]


class _Described(Exception):
    def __init__(self, info: StudyInfo) -> None:
        super().__init__("described")
        self.info = info


_describe_only = False
#: the program name study help shows (`kdray study NAME` sets it; default: the script's name)
prog: str | None = None


def describe(path: str) -> StudyInfo:
    """The build function, description and presets of the study script at `path`: the script
    runs as `__main__` up to its `main(...)` call, which returns them instead of running."""
    import runpy

    global _describe_only
    _describe_only = True
    try:
        runpy.run_path(path, run_name="__main__")
    except _Described as d:
        return d.info
    finally:
        _describe_only = False
    raise ConfigError(f"{path} does not call kdray.runtime.cli_study.main")


def measured_wall_time(study_name: str, results_dir: str = "results") -> str | None:
    """The wall time in `results/<study>.md` of the last run of that study, if any."""
    path = os.path.join(results_dir, f"{study_name}.md")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        m = re.search(r"^- wall time: (.+)$", f.read(), re.M)
    return m.group(1).strip() if m else None


def preset_lines(build: Callable[[str], Study], presets: list[str],
                 results_dir: str = "results") -> list[str]:
    """One line per preset: its study name, rough cost and the last measured wall time."""
    out = []
    for name in presets:
        try:
            study = build(name)
        except Exception as e:  # a preset needing something absent still gets listed
            out.append(f"  {name}: ({type(e).__name__}: {e})")
            continue
        wall = measured_wall_time(study.name, results_dir)
        out.append(f"  {name}: {study_cost(study)}; + its stages"
                   + (f"; last run {wall}" if wall else ""))
    return out


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The study's docstring and the preset list as written; each flag's default where the help
    does not already say it (None: the preset's own value)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (argparse.SUPPRESS, [])
                or action.nargs == 0):
            return text
        if action.default is None:
            return text + " (default: the preset's)"
        return text + " (default: %(default)s)"


def study_parser(description: str, presets: list[str],
                 build: Callable[[str], Study] | None = None) -> argparse.ArgumentParser:
    epilog = None
    if build is not None:
        epilog = "presets (rough cost: trials x epochs; measured wall time from results/):\n" + \
            "\n".join(preset_lines(build, presets))
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=_HelpFormatter)
    p.add_argument("--preset", default=presets[0], choices=presets, help="see below")
    p.add_argument("--address", default=None, help="Ray address (default: local Ray in-process)")
    p.add_argument("--workers-per-trial", type=_count(1), default=None,
                   help="DDP workers per trial")
    p.add_argument("--gpus-per-worker", type=_number, default=None, help="GPUs per DDP worker")
    p.add_argument("--cpus-per-worker", type=_count(0), default=None, help="CPUs per DDP worker")
    p.add_argument("--num-samples", type=_count(0), default=None, help="searched trials")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="comma-separated seeds for the ablation rows, e.g. 0,1,2")
    p.add_argument("--data-root", default=None, help="where datasets are looked for (default: the preset's data.root, then "
                        "the folders in $KDRAY_DATA_PATH)")
    p.add_argument("--download", action="store_true",
                   help="download missing datasets where torchvision can (CIFAR, Omniglot)")
    p.add_argument("--tracking-uri", default=None, help="MLflow (default sqlite:///./mlflow.db)")
    p.add_argument("--storage-path", default=None, help="Ray storage (default ./ray_results)")
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="Optuna study storage (default $KDRAY_OPTUNA_STORAGE, else optuna.db "
                        "beside a sqlite MLflow store, else ./optuna.db; 'none': in memory)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study (and its Optuna study)")
    p.add_argument("--results-dir", default="results",
                   help="where the results table and its figures are written")
    p.add_argument("--no-search", action="store_true", help="run the ablation rows only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key of every trial (repeatable)")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own output on the console too (always kept in "
                        "<storage>/<study>-console.log)")
    p.add_argument("--debug", action="store_true", help="on a user error, print the traceback too")
    return p


def main(build: Callable[[str], Study], description: str, presets: list[str],
         argv: list[str] | None = None, before: Callable[[Study, argparse.Namespace], Study]
         | None = None):
    """Parse flags, build the preset's Study, apply overrides, check every config it can run
    (rows x seeds, search corners, data, resources, locations) before any stage or Ray starts,
    run the `before` hook (stages), run the study with kdray's console. A user mistake exits 2
    with one message."""
    if _describe_only:
        raise _Described(StudyInfo(build, description, list(presets)))
    args = study_parser(description, presets, build).parse_args(argv)
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

    from kdray.runtime.console import StudyConsole, console_log_path
    from kdray.runtime.session import check_study
    from kdray.runtime.tune import run_study

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
    started = time.time()  # the wall time in the header counts the stages too
    log_path = console_log_path(args.storage_path, study.name)
    with StudyConsole(study, log_path, verbose=args.verbose) as shown:
        if not args.verbose:
            shown.write(f"[kdray] {study.name}: {study_cost(study)}; Ray's output: "
                        f"{os.path.relpath(log_path)} (--verbose shows it here)")
        if before is not None:
            study = before(study, args)
        return run_study(study, address=args.address, storage_path=args.storage_path,
                         tracking_uri=args.tracking_uri, resume=args.resume,
                         results_dir=args.results_dir, header={"preset": args.preset},
                         optuna_storage=args.optuna_storage, started=started)
