"""`kdray` command line: train, study, eval, report, ledger, cluster validate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import sys

from kdray.checks import user_error_exit
from kdray.config import ConfigError, ExperimentConfig, parse_overrides


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of workers, samples ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def read_config_file(path: str) -> ExperimentConfig:
    """The `--config` JSON file as a config; ConfigError naming the file when it is missing,
    not JSON, or not a config."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config: no file at {path!r}; pass a JSON config, e.g. a run's "
                          "config.json") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config: cannot read {path!r} ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config: {path!r} is not valid JSON (line {e.lineno}, column "
                          f"{e.colno}: {e.msg}); fix the file or pass a run's config.json") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {path!r} holds a JSON {type(raw).__name__}; expected an "
                          "object with config sections (data, model, optim, ...)")
    try:
        return ExperimentConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"--config {path!r}: {e}") from None


def _cfg(args) -> ExperimentConfig:
    over = parse_overrides(args.set)
    if getattr(args, "method", None):
        over = {"method": args.method, **over}
    if getattr(args, "config", None):
        return read_config_file(args.config).override(over)
    return ExperimentConfig().override(over)


def cmd_train(args) -> int:
    cfg = _cfg(args)
    if args.workers is not None:
        cfg = cfg.override({"resources.num_workers": args.workers})
    if args.download:
        cfg = cfg.override({"data.download": True})
    if args.no_ray:
        from kdray.engine.preflight import preflight
        from kdray.engine.runner import run_local

        preflight(cfg, check_machine=False)

        res = run_local(cfg, args.out)
        print(json.dumps({"metrics": res.metrics, "checkpoint": args.out}, indent=2))
        return 0
    from kdray.runtime.driver import fit, unique_run_name

    # an unnamed run gets a name of its own: a name resumes that run (and only its config)
    name = args.name or (cfg.name if cfg.name != "run" else unique_run_name(cfg))
    if args.fresh and not (args.name or cfg.name != "run"):
        raise ConfigError("--fresh restarts a named run: pass --name too")
    res = fit(cfg, run_name=name, storage_path=args.storage_path,
              tracking_uri=args.tracking_uri, address=args.address, fresh=args.fresh)
    print(json.dumps({"run_name": name, "metrics": res.metrics, "mlflow_run_id": res.mlflow_run_id,
                      "checkpoint": res.checkpoint_path}, indent=2))
    return 0


def cmd_study(args, rest: list[str]) -> int:
    path = args.study
    if not path.endswith(".py"):
        path = os.path.join("studies", f"{path}.py")
    if not os.path.isfile(path):
        raise ConfigError(f"no study script at {path!r}: run from the repository root, or pass a "
                          f"study name ({', '.join(_study_names()) or 'none found in ./studies'}) "
                          "or a path to a script")
    sys.argv = [path, *rest]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:  # the script's own exit: 2 for a user error, argparse's codes
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return 0


def _study_names() -> list[str]:
    return sorted(f[:-3] for f in os.listdir("studies") if f.endswith(".py")) if os.path.isdir(
        "studies") else []


def cmd_eval(args) -> int:
    import torch

    from kdray.data import build_eval_dataset, num_train_classes
    from kdray.engine.preflight import open_checkpoint
    from kdray.eval import build_evaluator
    from kdray.methods import build_method

    state = open_checkpoint(args.checkpoint, "--checkpoint")
    if not isinstance(state, dict) or not {"config", "model"} <= set(state):
        raise ConfigError(
            f"--checkpoint: {args.checkpoint!r} is not a kdray checkpoint (a dict with 'config' "
            "and 'model', written by `kdray train` as checkpoint_*/checkpoint.pt); a plain "
            "state_dict has no config to rebuild the model from: use it as model.teacher_ckpt")
    try:
        cfg = ExperimentConfig.from_dict(state["config"])
    except ConfigError as e:
        raise ConfigError(f"--checkpoint {args.checkpoint!r}: its stored config is invalid "
                          f"({e})") from None
    cfg = cfg.override(parse_overrides(args.set))
    method = build_method(cfg, num_train_classes(cfg))
    try:
        method.load_checkpoint_state(state["model"])
    except (KeyError, RuntimeError, TypeError, AttributeError) as e:
        raise ConfigError(f"--checkpoint {args.checkpoint!r}: its weights do not fit the "
                          f"{cfg.method} / {cfg.model.arch} model of its config ({e})") from None
    evaluator = build_evaluator(cfg, build_eval_dataset(cfg))
    if evaluator is None:
        raise ConfigError("eval.kind is 'none'; pass --set eval.kind=fewshot|top1")
    res = evaluator(method, torch.device("cpu"))
    print(json.dumps(res.metrics, indent=2))
    return 0


def cmd_report(args) -> int:
    from kdray.engine.preflight import check_locations
    from kdray.runtime.mlflow_store import study_table

    check_locations(tracking_uri=args.tracking_uri, create=False)
    print(study_table(args.study, args.tracking_uri))
    return 0


def cmd_ledger(args) -> int:
    """`kdray ledger`: results/LEDGER.md and results/ledger.csv from the MLflow store alone."""
    from kdray.runtime.ledger import write_ledger

    for path in write_ledger(args.tracking_uri, args.out):
        print(f"wrote {path}")
    return 0


def cmd_cluster(args) -> int:
    """`kdray cluster validate FILE`: Ray's offline checks of a `ray up` YAML ("ok" or the error,
    exit 2), then warnings (stderr) about world-open ingress, full-access worker profiles and
    unfilled placeholders."""
    from kdray.runtime.cluster import cluster_warnings, validate_cluster_yaml

    raw = validate_cluster_yaml(args.file)
    for w in cluster_warnings(raw):
        print(f"warning: {args.file}: {w}", file=sys.stderr)
    print(f"ok: {args.file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kdray", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="on a user error, print the traceback too")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="one training run (Ray Train DDP, or --no-ray)",
                       parents=[common])
    t.add_argument("--method", default=None)
    t.add_argument("--config", default=None, help="JSON config to start from")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--workers", type=positive_int, default=None, help="DDP workers (>= 1)")
    t.add_argument("--download", action="store_true", help="download missing data (torchvision)")
    t.add_argument("--name", default=None,
                   help="run name; re-running a name resumes it (default: a new unique name)")
    t.add_argument("--fresh", action="store_true",
                   help="start the named run afresh, discarding its stored checkpoints")
    t.add_argument("--address", default=None)
    t.add_argument("--storage-path", default=None)
    t.add_argument("--tracking-uri", default=None)
    t.add_argument("--no-ray", action="store_true", help="single process, no Ray/MLflow")
    t.add_argument("--out", default="runs/debug", help="checkpoint dir with --no-ray")
    s = sub.add_parser("study", help="run studies/<name>.py (flags after the name go to it)", parents=[common])
    s.add_argument("study", help="study name (e.g. kd_sweep) or path to a study script")
    e = sub.add_parser("eval", help="evaluate a checkpoint (few-shot or top-1) on its eval split", parents=[common])
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r = sub.add_parser("report", help="print a study's results table from MLflow", parents=[common])
    r.add_argument("study")
    r.add_argument("--tracking-uri", default=None)
    g = sub.add_parser("ledger", help="the reproduction ledger (paper cells vs our runs) from MLflow", parents=[common])
    g.add_argument("--tracking-uri", default=None)
    g.add_argument("--out", default="results", help="folder for LEDGER.md and ledger.csv")
    c = sub.add_parser("cluster", help="cluster launcher files: `kdray cluster validate FILE`", parents=[common])
    c.add_argument("action", choices=["validate"],
                   help="validate: the checks `ray up` makes before it calls a cloud API")
    c.add_argument("file", help="a `ray up` cluster YAML, e.g. clusters/aws.yaml")
    args, rest = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.cmd == "study":
        if args.debug:
            rest = [*rest, "--debug"]  # the study script's own parser takes it
        return user_error_exit(lambda: cmd_study(args, rest), "--debug" in rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    cmd = {"train": cmd_train, "eval": cmd_eval, "report": cmd_report,
           "ledger": cmd_ledger, "cluster": cmd_cluster}[args.cmd]
    return user_error_exit(lambda: cmd(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
