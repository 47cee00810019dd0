"""Cumulative Spatial KD (ICCV 2023) ablation: DeiT, DeiT hard distillation, then Cumulative
Spatial KD with local-only / global-only targets and the linear / x2 / cos fusion schedules, then a
TPE search (ASHA) over w_cskd, w_distill and the schedule. Writes results/cskd_ablation_<preset>.md.

    python studies/cskd_ablation.py --preset smoke      # CIFAR-10, CNN teacher stage, CPU, minutes
    python studies/cskd_ablation.py --preset mini       # CIFAR-10, 3 rows x 3 seeds, <1 h CPU
    python studies/cskd_ablation.py --preset imagenet   # DeiT-Ti + RegNetY-16GF (also imagenet_s/_b)
"""

from kdray.presets import cskd as P
from kdray.runtime.cli_study import main
from kdray.runtime.teacher_stage import teacher_stage
from kdray.study import Study


def build(preset: str) -> Study:
    return Study.from_preset(
        "cskd_ablation", preset, method="cskd", overrides=P.PRESETS[preset],
        rows=P.rows_for(preset), seeds=P.SEEDS.get(preset, (0,)), claims=P.CLAIMS,
        paper=lambda key, base: P.paper_number(key, preset),
        space={} if preset == "mini" else P.SPACE, budget=P.BUDGET[preset], metric="top1",
        columns=(("top-1", "top1"), ("top-5", "top5")),
        description=lambda base: "Cumulative Spatial KD (CNN teacher -> DeiT student): ablation "
                    + ("(DeiT, DeiT hard distillation, CSKD)." if preset == "mini" else "ladder.")
                    + " Paper column: ImageNet-1k top-1 (docs/methods/cskd.md §4.5"
                    + ("; mini: the DeiT-Ti cells, another dataset and scale, labelled IN-1k)."
                       if preset == "mini" else ")."))


def with_teacher(study: Study, args) -> Study:
    """The CPU presets (smoke, mini) train their CNN teacher first as a stage (once; reused on
    re-runs) and register it with its measured top-1."""
    if args.preset not in P.TEACHER or study.base.model.teacher_ckpt:
        return study
    cfg = study.base.override({**P.TEACHER[args.preset], "name": f"{study.name}-teacher"})
    t = teacher_stage(study, args, cfg, "teacher")
    return study.starting_from("model.teacher_ckpt", t.checkpoint,
                               f"Teacher {t.text} (full {cfg.eval.split} split).")


if __name__ == "__main__":
    main(build, __doc__, list(P.PRESETS), before=with_teacher)
