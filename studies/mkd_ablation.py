"""MKD (ICCV 2023) ablation on RetinaNet: the student alone, feature MSE without masking
(FGD-style, 1x1 align), + masking, + adaptive decoder, + global loss (full MKD), then a TPE search
(ASHA) over w_feat, w_global, the mask ratio and the decoder depth.
Writes results/mkd_ablation_<preset>.md.

    python studies/mkd_ablation.py --preset smoke      # COCO128, R34 teacher stage -> R18, CPU
    python studies/mkd_ablation.py --preset coco       # COCO 2017, R101 -> R50, 2x, 8 GPUs
    python studies/mkd_ablation.py --preset coco_r18   # COCO 2017, R101 -> R18
    python studies/mkd_ablation.py --preset coco --set model.teacher_ckpt=retinanet_r101.pt
"""

from kdray.presets import mkd as P
from kdray.runtime.cli_study import main
from kdray.runtime.driver import study_stage
from kdray.study import Study, split_note

COLUMNS = tuple((k, k) for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"))


def build(preset: str) -> Study:
    return Study.from_preset(
        "mkd_ablation", preset, method="mkd", overrides=P.PRESETS[preset], rows=P.ROWS,
        paper=lambda key, base: P.paper_number(key, preset), space=P.SPACE,
        budget=P.BUDGET[preset], metric="AP", columns=COLUMNS,
        description=lambda base: "MKD (masked-input RetinaNet student, adaptive decoder, FGD "
                    "global loss): ablation ladder, then a TPE search. Ours: COCO box AP in [0, "
                    "1]; paper column: COCO val2017 box AP in % (docs/methods/mkd.md §2.5; paper "
                    "teacher assumed RetinaNet-X101, ours R101). " + split_note(base) + " The "
                    "reported split `test` is COCO val2017 (coco128: its own 128 training images, "
                    "a smoke check only).")


def with_teacher(study: Study, args) -> Study:
    """Train the teacher detector first (once; reused on re-runs) unless model.teacher_ckpt is
    given."""
    if study.base.model.teacher_ckpt:
        return study
    cfg = study.base.override({**P.TEACHER[args.preset], "name": f"{study.name}-teacher"})
    stage = study_stage(study, args, cfg, "teacher")
    ap = stage.metrics.get(cfg.eval.key("AP"), float("nan"))
    print(f"[kdray] teacher RetinaNet-{cfg.model.arch}: AP {ap:.3f} ({stage.checkpoint})")
    return study.starting_from("model.teacher_ckpt", stage.checkpoint,
                               f"Teacher RetinaNet-{cfg.model.arch}: AP {ap:.3f}.")


if __name__ == "__main__":
    main(build, __doc__, list(P.PRESETS), before=with_teacher)
