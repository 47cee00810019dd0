"""Decoupled KD (CVPR 2022): teacher stage, then CE, KD, TCKD only, NCKD only and DKD, then a
TPE search (ASHA) over alpha (w_tckd), beta (w_nckd) and T. Writes results/dkd_ablation_<preset>.md.

    python studies/dkd_ablation.py --preset smoke      # CIFAR-10, conv4 -> conv2, CPU, minutes
    python studies/dkd_ablation.py --preset cifar100   # ResNet32x4 -> ResNet8x4, 240 epochs
    python studies/dkd_ablation.py --preset cifar100_wrn40_2_wrn16_2   # other official pairs
"""

from kdray.presets import dkd as P
from kdray.runtime.cli_study import main
from kdray.runtime.teacher_stage import teacher_stage
from kdray.study import Study


def build(preset: str) -> Study:
    return Study.from_preset(
        "dkd_ablation", preset, method="dkd", overrides=P.PRESETS[preset], rows=P.ROWS,
        paper=lambda key, base: P.paper_number(key, preset), space=P.SPACE,
        budget=P.BUDGET[preset], metric="top1", columns=(("top-1", "top1"), ("top-5", "top5")),
        description=lambda base: "DKD (frozen CNN teacher -> CNN student): CE, KD and the "
                    "decoupled terms. Paper column: "
                    "CIFAR-100 top-1 of the same pair (docs/methods/dkd.md §3).")


def with_teacher(study: Study, args) -> Study:
    """Train the teacher once (reused on re-runs) unless model.teacher_ckpt is given, and
    register it with its measured top-1 (results/teachers.json)."""
    if study.base.model.teacher_ckpt:
        return study
    arch = study.base.model.teacher_arch
    cfg = study.base.override({**P.TEACHER[args.preset], "model.arch": arch,
                               "model.teacher_arch": "", "name": f"{study.name}-teacher"})
    t = teacher_stage(study, args, cfg, f"teacher-{arch}")
    return study.starting_from("model.teacher_ckpt", t.checkpoint, f"Teacher {t.text}.")


if __name__ == "__main__":
    main(build, __doc__, list(P.PRESETS), before=with_teacher)
