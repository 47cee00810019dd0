"""MKD (ICCV 2023) ablation on RetinaNet: the student alone, feature MSE without masking
(FGD-style, 1x1 align), + masking, + adaptive decoder, + global loss (full MKD), then a TPE search
(ASHA) over w_feat, w_global, the mask ratio and the decoder depth.
Writes results/mkd_ablation_<preset>.md.

    python studies/mkd_ablation.py --preset smoke      # COCO128, R34 teacher stage -> R18, CPU
    python studies/mkd_ablation.py --preset mini       # generated shapes, 3 rows x 3 seeds, <1 h CPU
    python studies/mkd_ablation.py --preset coco       # COCO 2017, R101 -> R50, 2x, 8 GPUs
    python studies/mkd_ablation.py --preset coco_r18   # COCO 2017, R101 -> R18
    python studies/mkd_ablation.py --preset coco --set model.teacher_ckpt=retinanet_r101.pt
"""

from kdray.presets import mkd as P
from kdray.runtime.cli_study import main
from kdray.runtime.teacher_stage import teacher_stage
from kdray.study import Study

COLUMNS = tuple((k, k) for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"))
# shapes_det has no large object (its largest box, 56 x 56 px, is under COCO's 96^2 px area), so
# its AP_L is COCO's -1 "no ground truth": the mini table leaves the column out
MINI_COLUMNS = COLUMNS[:-1]


MINI_NOTE = ("Data: shapes_det, generated (1-3 of three shapes per 128-px image, exact boxes; "
             "kdray/data/shapes_det.py), because a detector trained from scratch on COCO128 stays "
             "at AP 0 within this budget. The test split: 600 generated images; box AP in [0, 1]. "
             "No paper number matches this setting.")


def build(preset: str) -> Study:
    mini = preset == "mini"
    return Study.from_preset(
        "mkd_ablation", preset, method="mkd", overrides=P.PRESETS[preset],
        rows=P.rows_for(preset), seeds=P.SEEDS.get(preset, (0,)), claims=P.CLAIMS,
        paper=lambda key, base: P.paper_number(key, preset), space={} if mini else P.SPACE,
        budget=P.BUDGET[preset], metric="AP", columns=MINI_COLUMNS if mini else COLUMNS,
        description=lambda base: "MKD (masked-input RetinaNet student, adaptive decoder, FGD "
                    "global loss): " + (
                        "ablation (student alone, FGD-style feature MSE, MKD full). "
                        + MINI_NOTE if mini else
                        "ablation ladder. Ours: COCO box AP in [0, 1]; paper "
                        "column: COCO val2017 box AP in % (docs/methods/mkd.md §2.5; paper teacher "
                        "assumed RetinaNet-X101, ours R101). The reported "
                        "split `test` is COCO val2017 (coco128: its own 128 training images, a "
                        "smoke check only)."))


def with_teacher(study: Study, args) -> Study:
    """Train the teacher detector first (once; reused on re-runs) unless model.teacher_ckpt is
    given, and register it with its measured box AP (results/teachers.json)."""
    if study.base.model.teacher_ckpt:
        return study
    cfg = study.base.override({**P.TEACHER[args.preset], "name": f"{study.name}-teacher"})
    t = teacher_stage(study, args, cfg, "teacher", metric="AP")
    return study.starting_from("model.teacher_ckpt", t.checkpoint, f"Teacher {t.text}.")


if __name__ == "__main__":
    main(build, __doc__, list(P.PRESETS), before=with_teacher)
