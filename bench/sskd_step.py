"""Cost of an SSKD student step (normal view + 3 rotations = 4 views per image) against a plain
KD step (1 view) on the same teacher/student pair.

SSKD runs student and teacher on 4x the images, adds the SS modules, a (3B x B) similarity
matrix and the rank-based selection, so expect roughly 4x fewer source images per second than
KD. Random images and random weights (speed only); forward + backward + SGD step per iteration.
Throughput counts source images (one image = 4 forwards for SSKD).

    python bench/sskd_step.py                  # CPU: wrn_16_2 -> wrn_16_1, 32 px, batch 16
    python bench/sskd_step.py --gpu            # resnet32x4 -> resnet8x4, batch 64 x 4 views,
                                               # channels-last + bf16 autocast (CUDA only)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _steps import StepRunner, bench_args, compare  # bench/_steps.py

from kdray.config import ExperimentConfig
from kdray.methods.sskd.method import ss_head
from kdray.modules.teachers import build_classifier as build_student

PRESETS = {
    "cpu": {"model.arch": "wrn_16_1", "model.teacher_arch": "wrn_16_2", "batch": 16},
    "gpu": {"model.arch": "resnet8x4", "model.teacher_arch": "resnet32x4", "batch": 64},
}
ROWS = {"KD (1 view)": {"method_cfg.w_ss": 0.0, "method_cfg.w_tf": 0.0},
        "KD + L_T (4 views)": {"method_cfg.w_ss": 0.0},
        "SSKD (4 views)": {}}
CLASSES = 100


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def random_teacher_file(arch: str, folder: str) -> str:
    """A T2-format checkpoint (classifier + SS module) with random weights."""
    cls = build_student(ExperimentConfig().override({"model.arch": arch}), CLASSES)
    path = str(Path(folder) / f"{arch}_random_t2.pt")
    torch.save({"model": {"teacher": cls.state_dict(),
                          "ss_head": ss_head(cls.backbone.num_features).state_dict()}}, path)
    return path


def main() -> None:
    a = bench_args(__doc__, gpu_help="resnet32x4 -> resnet8x4 on CUDA, bf16", steps=5, warmup=2,
                   batch_help="source images per step")
    pre = dict(PRESETS["gpu" if a.gpu else "cpu"])
    batch = a.batch or pre.pop("batch")
    pre.pop("batch", None)
    device = torch.device("cuda" if a.gpu else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        base = ExperimentConfig().override({
            "method": "sskd", **pre, "data.image_size": 32,
            "model.teacher_ckpt": random_teacher_file(pre["model.teacher_arch"], tmp)})
        print(f"{'gpu' if a.gpu else 'cpu'}: student {pre['model.arch']}, teacher "
              f"{pre['model.teacher_arch']}, 32 px, batch {batch} images, "
              f"{torch.get_num_threads()} threads")
        runners = {label: StepRunner(base.override(over), CLASSES, batch, device, sgd,
                                     channels_last=a.gpu)
                   for label, over in ROWS.items()}
    compare(runners, ref="KD (1 view)", warmup=a.warmup, rounds=a.rounds, steps=a.steps)


if __name__ == "__main__":
    main()
