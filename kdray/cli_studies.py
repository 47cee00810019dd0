"""`kdray study`: find the study scripts (`studies/`), list them with their presets and costs,
and run one by name with the rest of the command line as its own flags."""

from __future__ import annotations

import os
import runpy
import sys

from kdray.config import ConfigError


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
        raise ConfigError(f"no study script at {path!r}: run from the repository root, or pass a "
                          f"study name ({known}) or a path to a script")
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
    except SystemExit as e:  # the script's own exit: 2 for a user error, argparse's codes
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
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
