"""Cost of a Cumulative Spatial KD training step against a DeiT hard-distillation step.

Both steps run the same frozen CNN teacher and the same distilled DeiT; Cumulative Spatial KD
adds the distillation head on every patch token, a 2x2 pooling and a cross-entropy over the
teacher grid, which should cost almost nothing. Plain DeiT (no teacher) is shown for scale.
Random images and random weights (speed only); forward + backward + AdamW step per iteration.

    python bench/cskd_step.py                       # CPU: 96-d DeiT (patch 4) + conv3 at 32 px
    python bench/cskd_step.py --preset gpu          # DeiT-S/16 + RegNetY-16GF, 224 px, bf16
"""

from __future__ import annotations

import argparse

import torch
from _steps import StepRunner, compare  # bench/_steps.py

import kdray.methods.cskd.method as cskd_module
from kdray.config import ExperimentConfig
from kdray.methods.cskd.dense import DenseTeacher
from kdray.modules.backbones import Classifier, build_backbone


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-4)


PRESETS = {
    "cpu": {"model.arch": "vit_micro_p4_32", "model.teacher_arch": "conv3", "data.image_size": 32,
            "classes": 10, "batch": 64},
    "gpu": {"model.arch": "deit_small_distilled_patch16_224",
            "model.teacher_arch": "regnety_160", "data.image_size": 224, "classes": 1000,
            "batch": 128},
}
ROWS = {"DeiT (no teacher)": {"method_cfg.w_distill": 0.0, "method_cfg.w_cskd": 0.0},
        "DeiT hard distillation": {"method_cfg.w_cskd": 0.0},
        "Cumulative Spatial KD (hard)": {},
        "Cumulative Spatial KD (soft)": {"method_cfg.cskd_loss": "soft"}}


def random_teacher(cfg: ExperimentConfig, num_classes: int) -> DenseTeacher:
    """The configured teacher architecture with random weights (no checkpoint needed)."""
    arch = cfg.model.teacher_arch
    if arch in ("conv3", "conv4", "conv2"):
        net = Classifier(build_backbone(arch), num_classes)
    else:
        import timm

        net = timm.create_model(arch, num_classes=num_classes)
    return DenseTeacher(net).requires_grad_(False).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    pre = dict(PRESETS[a.preset])
    classes, default_batch = pre.pop("classes"), pre.pop("batch")
    batch = a.batch or default_batch
    device = torch.device("cuda" if a.preset == "gpu" else "cpu")
    if a.preset == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--preset gpu needs a CUDA device")
    cskd_module.build_dense_teacher = random_teacher  # speed only: no checkpoint or hub download
    base = ExperimentConfig().override({"method": "cskd", **pre})
    print(f"{a.preset}: student {pre['model.arch']}, teacher {pre['model.teacher_arch']}, "
          f"{pre['data.image_size']} px, batch {batch}, {torch.get_num_threads()} threads")
    runners = {label: StepRunner(base.override(over), classes, batch, device, adamw,
                                 channels_last=device.type == "cuda")
               for label, over in ROWS.items()}
    compare(runners, ref="DeiT hard distillation", warmup=a.warmup, rounds=a.rounds, steps=a.steps)


if __name__ == "__main__":
    main()
