"""Hinton KD baseline: teacher stage, CE vs KD rows, then a TPE search over tau and the KD weight.

    python studies/kd_sweep.py --preset smoke      # generated few-shot data, CPU, a few minutes
"""

from kdray.presets import method_space
from kdray.runtime.cli_study import main
from kdray.runtime.driver import study_stage
from kdray.search import Budget
from kdray.study import Study

PRESETS = {
    "smoke": {"data.dataset": "synthetic_fs", "data.image_size": 32, "data.batch_size": 64,
              "model.arch": "conv4", "model.teacher_arch": "conv4_wide", "train.epochs": 3,
              "train.steps_per_epoch": 25, "optim.lr": 2e-3, "eval.kind": "fewshot",
              "eval.shots": "1,5", "eval.episodes": 200, "eval.queries": 15},
    "cifar10": {"data.dataset": "cifar10", "data.image_size": 32, "data.batch_size": 128,
                "model.arch": "conv4", "model.teacher_arch": "conv4_wide", "train.epochs": 30,
                "optim.name": "sgd", "optim.lr": 0.05, "optim.weight_decay": 5e-4,
                "eval.kind": "top1", "eval.split": "test"},
}


def build(preset: str) -> Study:
    return Study.from_preset(
        "kd_sweep", preset, method="kd", overrides=PRESETS[preset], config_name="kd_sweep",
        rows=(("CE student", "", {"method": "ce"}), ("KD tau=4", "", {})),
        space=method_space("kd", ("tau", "w_kd")), budget=Budget(4, 1),
        metric=lambda base: "acc_5w1s" if base.eval.kind == "fewshot" else "top1",
        columns=lambda base: (("5w1s", "acc_5w1s"), ("5w5s", "acc_5w5s"))
        if base.eval.kind == "fewshot" else (("top-1", "top1"),),
        description=lambda base: "Hinton KD against the CE-trained student.")


def with_teacher(study: Study, args) -> Study:
    teacher_cfg = study.base.override({"method": "ce", "model.arch": study.base.model.teacher_arch,
                                       "name": f"{study.name}-teacher"})
    stage = study_stage(study, args, teacher_cfg, "teacher")
    print(f"[kdray] teacher metrics: { {k: round(v, 2) for k, v in stage.metrics.items()} }")
    return study.starting_from("model.teacher_ckpt", stage.checkpoint, "")


if __name__ == "__main__":
    main(build, __doc__, list(PRESETS), before=with_teacher)
