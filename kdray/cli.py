"""`kdray` command line: train, study, eval, report, ledger, cluster validate."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kdray.checks import user_error_exit
from kdray.cli_studies import cmd_study
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
    from kdray.runtime.driver import fit
    from kdray.runtime.run_identity import unique_run_name

    # an unnamed run gets a name of its own: a name resumes that run (and only its config)
    name = args.name or (cfg.name if cfg.name != "run" else unique_run_name(cfg))
    if args.fresh and not (args.name or cfg.name != "run"):
        raise ConfigError("--fresh restarts a named run: pass --name too")
    res = fit(cfg, run_name=name, storage_path=args.storage_path,
              tracking_uri=args.tracking_uri, address=args.address, fresh=args.fresh,
              raise_on_error=args.debug)
    if res.error is not None:
        return _training_failed(name, res.error)
    print(json.dumps({"run_name": name, "metrics": res.metrics, "mlflow_run_id": res.mlflow_run_id,
                      "checkpoint": res.checkpoint_path}, indent=2))
    return 0


# what to try for a worker error, by the error's type name
_HINTS = {"NonFiniteLossError": "lower optim.lr, check train.init_from and the data, or keep "
                                "train.amp off",
          "OutOfMemoryError": "lower data.batch_size or use more workers"}


def _training_failed(name: str, error: BaseException) -> int:
    """A run whose training failed (Ray Train's error wraps the worker's): one paragraph with
    the worker's error and where its record is; exit 1 (`--debug` shows the traceback)."""
    from kdray.runtime.failures import reason

    why = reason(error)
    hint = next((h for k, h in _HINTS.items() if why.startswith(k)), "")
    print(f"error: run {name!r} failed: {why}\n"
          f"Its MLflow run is marked FAILED, with the full traceback as error.txt and the reason "
          f"as tag kdray.error; --debug shows the traceback here."
          + (f"\nTo fix: {hint}." if hint else ""), file=sys.stderr)
    return 1


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
    """`kdray report NAME [--preset P] [--url]`: the study's table (or its MLflow UI link) from an
    existing store; never creates one."""
    from kdray.engine.preflight import check_locations
    from kdray.runtime.mlflow_store import open_store, resolve_study, study_table, study_url

    check_locations(tracking_uri=args.tracking_uri, create=False)  # a server answers, quickly
    client = open_store(args.tracking_uri)
    name = resolve_study(client, args.study, args.preset)
    print(study_url(client, name) if args.url else study_table(name, client=client))
    return 0


def cmd_ledger(args) -> int:
    """`kdray ledger`: results/LEDGER.md and results/ledger.csv from the MLflow store(s) alone."""
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
    s = sub.add_parser("study", help="run studies/<name>.py (flags after the name go to it; "
                                     "`kdray study NAME --help` shows them)", parents=[common])
    s.add_argument("study", nargs="?", help="study name (e.g. kd_sweep) or path to a study script")
    s.add_argument("--list", action="store_true", help="list the studies, presets and rough cost")
    e = sub.add_parser("eval", help="evaluate a checkpoint (few-shot or top-1) on its eval split",
                       parents=[common])
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r = sub.add_parser("report", help="print a study's results table from MLflow",
                       parents=[common])
    r.add_argument("study", help="study name, e.g. smkd_ablation_smoke, or smkd_ablation with "
                                 "--preset smoke")
    r.add_argument("--preset", default=None)
    r.add_argument("--url", action="store_true", help="print the study's MLflow UI link instead")
    r.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else "
                                                        "sqlite:///mlflow.db")
    g = sub.add_parser("ledger", help="the reproduction ledger (paper cells vs our runs) from MLflow",
                       parents=[common])
    g.add_argument("--tracking-uri", action="append", default=None,
                   help="an MLflow store to read (repeat it to merge several stores); default: "
                        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    g.add_argument("--out", default="results", help="folder for LEDGER.md and ledger.csv")
    c = sub.add_parser("cluster", help="cluster launcher files: `kdray cluster validate FILE`", parents=[common])
    c.add_argument("action", choices=["validate"],
                   help="validate: the checks `ray up` makes before it calls a cloud API")
    c.add_argument("file", help="a `ray up` cluster YAML, e.g. clusters/aws.yaml")
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "study" and not argv[1].startswith("-"):
        args = argparse.Namespace(cmd="study", study=argv[1], list=False, debug=False)
        rest = argv[2:]
    else:  # the study's own flags (and --help) go to its script, not to this parser
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
    try:
        return user_error_exit(lambda: cmd(args), args.debug)
    except KeyboardInterrupt as e:  # RunInterrupted: `kdray train` stopped by Ctrl-C, record closed
        from kdray.runtime.interrupts import INTERRUPTED_EXIT

        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
