"""Cumulative Spatial KD (ICCV 2023) ablation: DeiT, DeiT hard distillation, then Cumulative
Spatial KD with local-only / global-only targets and the linear / x2 / cos fusion schedules, then a
TPE search (ASHA) over w_cskd, w_distill and the schedule. Writes results/cskd_ablation_<preset>.md.

    python studies/cskd_ablation.py --preset smoke      # CIFAR-10, CNN teacher stage, CPU, minutes
    python studies/cskd_ablation.py --preset imagenet   # DeiT-Ti + RegNetY-16GF (also imagenet_s/_b)
"""

from kdray.presets import cskd as P
from kdray.runtime.cli_study import main
from kdray.runtime.driver import study_stage
from kdray.study import Study, split_note


def build(preset: str) -> Study:
    return Study.from_preset(
        "cskd_ablation", preset, method="cskd", overrides=P.PRESETS[preset], rows=P.ROWS,
        paper=lambda key, base: P.paper_number(key, preset), space=P.SPACE,
        budget=P.BUDGET[preset], metric="top1", columns=(("top-1", "top1"), ("top-5", "top5")),
        description=lambda base: "Cumulative Spatial KD (CNN teacher -> DeiT student): ablation "
                    "ladder, then a TPE search. " + split_note(base) + " Paper column: "
                    "ImageNet-1k top-1 (docs/methods/cskd.md §4.5).")


def with_teacher(study: Study, args) -> Study:
    """The smoke preset trains its CNN teacher first (once; reused on re-runs)."""
    if args.preset != "smoke" or study.base.model.teacher_ckpt:
        return study
    cfg = study.base.override({**P.SMOKE_TEACHER, "name": f"{study.name}-teacher"})
    stage = study_stage(study, args, cfg, "teacher")
    acc = stage.metrics.get(cfg.eval.key("top1"), float("nan"))
    print(f"[kdray] teacher {cfg.model.arch}: top-1 {acc:.2f}% ({stage.checkpoint})")
    return study.starting_from("model.teacher_ckpt", stage.checkpoint,
                               f"Teacher {cfg.model.arch}: top-1 {acc:.2f}% (full {cfg.eval.split} "
                               "split).")


if __name__ == "__main__":
    main(build, __doc__, list(P.PRESETS), before=with_teacher)
