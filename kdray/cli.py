"""`kdray` command line: train, study, eval, report, ledger, cluster validate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import sys

from kdray.config import ConfigError, ExperimentConfig, parse_overrides


def _cfg(args) -> ExperimentConfig:
    over = parse_overrides(args.set)
    if getattr(args, "method", None):
        over = {"method": args.method, **over}
    if getattr(args, "config", None):
        with open(args.config) as f:
            return ExperimentConfig.from_dict(json.load(f)).override(over)
    return ExperimentConfig().override(over)


def cmd_train(args) -> int:
    cfg = _cfg(args)
    if args.workers:
        cfg = cfg.override({"resources.num_workers": args.workers})
    if args.download:
        cfg = cfg.override({"data.download": True})
    if args.no_ray:
        from kdray.engine.runner import run_local

        res = run_local(cfg, args.out)
        print(json.dumps({"metrics": res.metrics, "checkpoint": args.out}, indent=2))
        return 0
    from kdray.runtime.driver import fit

    res = fit(cfg, run_name=args.name or cfg.name, storage_path=args.storage_path,
              tracking_uri=args.tracking_uri, address=args.address)
    print(json.dumps({"metrics": res.metrics, "mlflow_run_id": res.mlflow_run_id,
                      "checkpoint": res.checkpoint_path}, indent=2))
    return 0


def studies_dir() -> str:
    """`studies/` of the working directory, else of the repository kdray is installed from."""
    here = "studies"
    if os.path.isdir(here):
        return here
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "studies")


def study_path(name: str) -> str:
    path = name if name.endswith(".py") else os.path.join(studies_dir(), f"{name}.py")
    if not os.path.isfile(path):
        known = ", ".join(sorted(study_names())) or "none"
        raise ConfigError(f"no study script at {path!r} (studies: {known}; "
                          "run from the repository root, or pass a path)")
    return path


def study_names() -> list[str]:
    d = studies_dir()
    return sorted(f[:-3] for f in os.listdir(d) if f.endswith(".py")) if os.path.isdir(d) else []


def cmd_study(args, rest: list[str]) -> int:
    from kdray.runtime import cli_study

    if args.list or not args.study:
        return cmd_study_list()
    path = study_path(args.study)
    sys.argv = [path, *rest]
    cli_study.prog = f"kdray study {args.study}"
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        cli_study.prog = None
    return 0


def _first_sentence(doc: str) -> str:
    """The docstring's first paragraph on one line, less its "Writes ..." sentence."""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    return para.split(" Writes ")[0]


def cmd_study_list() -> int:
    """`kdray study --list`: every study script, its first docstring line and its presets with a
    rough cost (and the wall time of the last run where results/ has one)."""
    from kdray.runtime.cli_study import describe, preset_lines

    for name in study_names():
        info = describe(os.path.join(studies_dir(), f"{name}.py"))
        print(f"{name}: {_first_sentence(info.description)}")
        print("\n".join(preset_lines(info.build, info.presets)))
    print("\nrun: kdray study NAME --preset P   (kdray study NAME --help: its flags and defaults)")
    return 0


def cmd_eval(args) -> int:
    import torch

    from kdray.checkpoint import load_checkpoint
    from kdray.data import build_eval_dataset, num_train_classes
    from kdray.eval import build_evaluator
    from kdray.methods import build_method

    state = load_checkpoint(args.checkpoint)
    cfg = ExperimentConfig.from_dict(state["config"]).override(parse_overrides(args.set))
    method = build_method(cfg, num_train_classes(cfg))
    method.load_checkpoint_state(state["model"])
    evaluator = build_evaluator(cfg, build_eval_dataset(cfg))
    if evaluator is None:
        raise ConfigError("eval.kind is 'none'; pass --set eval.kind=fewshot|top1")
    res = evaluator(method, torch.device("cpu"))
    print(json.dumps(res.metrics, indent=2))
    return 0


def cmd_report(args) -> int:
    """`kdray report NAME [--preset P] [--url]`: the study's table (or its MLflow UI link) from an
    existing store; never creates one."""
    from kdray.runtime.mlflow_store import open_store, resolve_study, study_table, study_url

    client = open_store(args.tracking_uri)
    name = resolve_study(client, args.study, args.preset)
    print(study_url(client, name) if args.url else study_table(name, client=client))
    return 0


def cmd_ledger(args) -> int:
    """`kdray ledger`: results/LEDGER.md and results/ledger.csv from the MLflow store alone."""
    from kdray.runtime.ledger import write_ledger

    for path in write_ledger(args.tracking_uri, args.out):
        print(f"wrote {path}")
    return 0


def cmd_cluster(args) -> int:
    """`kdray cluster validate FILE`: Ray's offline checks of a `ray up` YAML; "ok" or the error."""
    from kdray.runtime.cluster import ClusterConfigError, validate_cluster_yaml

    try:
        validate_cluster_yaml(args.file)
    except ClusterConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"ok: {args.file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kdray", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="one training run (Ray Train DDP, or --no-ray)")
    t.add_argument("--method", default=None)
    t.add_argument("--config", default=None, help="JSON config to start from")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--workers", type=int, default=None, help="DDP workers")
    t.add_argument("--download", action="store_true", help="download missing data (torchvision)")
    t.add_argument("--name", default=None)
    t.add_argument("--address", default=None)
    t.add_argument("--storage-path", default=None)
    t.add_argument("--tracking-uri", default=None)
    t.add_argument("--no-ray", action="store_true", help="single process, no Ray/MLflow")
    t.add_argument("--out", default="runs/debug", help="checkpoint dir with --no-ray")
    s = sub.add_parser("study", help="run studies/<name>.py (flags after the name go to it; "
                                     "`kdray study NAME --help` shows them)")
    s.add_argument("study", nargs="?", help="study name (e.g. kd_sweep) or path to a study script")
    s.add_argument("--list", action="store_true", help="list the studies, presets and rough cost")
    e = sub.add_parser("eval", help="evaluate a checkpoint (few-shot or top-1) on its eval split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r = sub.add_parser("report", help="print a study's results table from MLflow")
    r.add_argument("study", help="study name, e.g. smkd_ablation_smoke, or smkd_ablation with "
                                 "--preset smoke")
    r.add_argument("--preset", default=None)
    r.add_argument("--url", action="store_true", help="print the study's MLflow UI link instead")
    r.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else "
                                                        "sqlite:///mlflow.db")
    g = sub.add_parser("ledger", help="the reproduction ledger (paper cells vs our runs) from MLflow")
    g.add_argument("--tracking-uri", default=None)
    g.add_argument("--out", default="results", help="folder for LEDGER.md and ledger.csv")
    c = sub.add_parser("cluster", help="cluster launcher files: `kdray cluster validate FILE`")
    c.add_argument("action", choices=["validate"],
                   help="validate: the checks `ray up` makes before it calls a cloud API")
    c.add_argument("file", help="a `ray up` cluster YAML, e.g. clusters/aws.yaml")
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "study" and not argv[1].startswith("-"):
        args, rest = argparse.Namespace(cmd="study", study=argv[1], list=False), argv[2:]
    else:  # the study's own flags (and --help) go to its script, not to this parser
        args, rest = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.cmd == "study":
            return cmd_study(args, rest)
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        return {"train": cmd_train, "eval": cmd_eval, "report": cmd_report,
                "ledger": cmd_ledger, "cluster": cmd_cluster}[args.cmd](args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
