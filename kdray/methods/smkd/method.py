"""SMKD: "Supervised Masked Knowledge Distillation for Few-Shot Transformers" (Lin, Han, Ma, Huang,
Lin & Chang, CVPR 2023, arXiv:2303.15466; official code HL-hanlin/SMKD).

A ViT student and its EMA teacher are trained in two phases: phase 1 (`phase="ssl"`) is iBOT
self-distillation without labels; phase 2 (`phase="supervised"`) continues from the phase-1
checkpoint and lets labels pick the distillation pairs, so [CLS] tokens and masked patch tokens are
distilled across *different images of the same class* found inside the mini-batch.

Terms (teacher sees the 2 unmasked global crops; student the 2 masked global crops + local crops;
teacher outputs centred, temperature `teacher_temp` after a warm-up, student `student_temp`):
- `cls`  Eq. 1 (ssl): H(P_t(x^q), P_s(x^v)) for the same image, v != q, all views.
         Eq. 3 (supervised): H(P_t(y'), P_s(x_hat')) over same-class (x, y) global pairs; local
         crops pair only with their own image. Mean over all pairs.
- `mim`  Eq. 2: masked-patch cross-entropy, same image and view, mean over masked patches.
- `patch` Eq. 4-5: each teacher patch k of y' is matched to its most cosine-similar student patch
         k+ of x_hat' (backbone features), loss sum_k w_k H(P_t(y')_k, P_s(x_hat')_{k+});
         w_k uniform (`wk_mode="uniform"`) or the teacher's [CLS] attention (`"attention"`).
Total: w_cls * cls + w_patch * patch + w_mim * mim (phase defaults: ssl 1/0/1, supervised 1/1/0).

Deviations of the released code from the paper (docs/methods/smkd.md §1.2); defaults follow the paper,
`patch_impl="official"` and `cls_impl="official"` reproduce the code:
1. patch match score = product of per-patch feature sums (an einsum with mismatched channel
   letters), not a cosine; 2. matched student patches are read from the first image of each class
   group; 3. the teacher target comes from the student's view s, not the matched view t;
4. same-image global-global [CLS] pairs are excluded. The paper-mode pair set for both terms is
"same class, not the same view of the same image" (same-image cross-view pairs included).
Other choices: one teacher temperature schedule for [CLS] and patches (the code's two share the
same defaults); centres are refreshed in `after_step`; the last layer's gradients are set to None
(as DINO/iBOT do) during `optim.freeze_last_layer_epochs`; `train.init_from` restores student,
teacher and centres but not the optimizer state (the code also restores the optimizer).
In phase 1, pairs are "same image" (labels replaced by the batch index).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdray.checks import ConfigError, check, check_choice, check_range
from kdray.dist import unwrap
from kdray.methods.base import Method
from kdray.methods.smkd import losses as L
from kdray.modules.backbones import build_backbone
from kdray.modules.center import Center
from kdray.modules.ema import ema_momentum, ema_update_, frozen_copy
from kdray.modules.heads import IBOTHead
from kdray.modules.health import teacher_health
from kdray.modules.losses import weighted_sum
from kdray.modules.multicrop import MultiCropModel, MultiCropOutput
from kdray.modules.teachers import load_strict
from kdray.modules.vit import MaskedViT, arch_patch_size
from kdray.registry import register_method
from kdray.schedules import warmup_then_constant
from kdray.search import Choice, Float
from kdray.types import Batch, DataInfo, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig

log = logging.getLogger(__name__)
N_GLOBAL = 2


@dataclass(frozen=True)
class SMKDConfig:
    phase: str = "ssl"                   # ssl = phase 1 (iBOT), supervised = phase 2 (README)
    w_cls: float = 1.0                   # lambda1, main_smkd.py default
    w_patch: float | None = None         # lambda2; None -> phase default (ssl 0, supervised 1)
    w_mim: float | None = None           # lambda3; None -> phase default (ssl 1, supervised 0)
    patch_impl: str = "paper"            # paper | official (docs/methods/smkd.md §1.2, items 1-3)
    cls_impl: str = "paper"              # paper | official (item 4: no same-image global pairs)
    wk_mode: str = "uniform"             # uniform | attention (code `--weighted_pool`, default off)
    teacher_temp: float = 0.07           # main_smkd.py defaults
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    student_temp: float = 0.1
    ema_momentum: float = 0.996          # cosine to 1.0 per iteration
    center_momentum: float = 0.9
    out_dim: int = 8192                  # iBOTHead, shared head for [CLS] and patches
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = False        # student head in the SMKD code
    allow_scratch: bool = False          # let phase 2 start without a phase-1 checkpoint

    SEARCH: ClassVar[dict] = {
        "w_patch": Float(0.0, 2.0),              # paper ablation: on/off (lambda2 in {0, 1})
        "w_mim": Float(0.0, 1.0),                # code default 0 in phase 2; iBOT uses 1
        "patch_impl": Choice(["paper", "official"]),
        "cls_impl": Choice(["paper", "official"]),
        "wk_mode": Choice(["uniform", "attention"]),
        "teacher_temp": Float(0.04, 0.07),       # DINO recommends <= 0.07 after warm-up
        "ema_momentum": Float(0.99, 0.9995),     # DINO/iBOT range
    }

    # Defaults that follow `phase` (re-derived on a phase override; see ExperimentConfig.override)
    DERIVED: ClassVar[dict[str, tuple[str, ...]]] = {"phase": ("w_patch", "w_mim")}

    def __post_init__(self) -> None:
        check_choice("method_cfg.phase", self.phase, ("ssl", "supervised"))
        ssl = self.phase == "ssl"
        if self.w_patch is None:
            object.__setattr__(self, "w_patch", 0.0 if ssl else 1.0)
        if self.w_mim is None:
            object.__setattr__(self, "w_mim", 1.0 if ssl else 0.0)
        check_choice("method_cfg.patch_impl", self.patch_impl, ("paper", "official"))
        check_choice("method_cfg.cls_impl", self.cls_impl, ("paper", "official"))
        check_choice("method_cfg.wk_mode", self.wk_mode, ("uniform", "attention"))
        for k in ("w_cls", "w_patch", "w_mim"):
            check_range(f"method_cfg.{k}", getattr(self, k), 0.0, 100.0)
        check(sum(self.weights) > 0, "method_cfg.w_*", "at least one loss weight must be > 0")
        for k in ("teacher_temp", "warmup_teacher_temp", "student_temp"):
            check_range(f"method_cfg.{k}", getattr(self, k), 0.0, 10.0, low_open=True)
        check_range("method_cfg.warmup_teacher_temp_epochs", self.warmup_teacher_temp_epochs, 0.0)
        check_range("method_cfg.ema_momentum", self.ema_momentum, 0.0, 1.0)
        check_range("method_cfg.center_momentum", self.center_momentum, 0.0, 1.0)
        for k in ("out_dim", "hidden_dim", "bottleneck_dim"):
            check_range(f"method_cfg.{k}", getattr(self, k), 1)

    @property
    def weights(self) -> tuple[float, float, float]:
        """(w_cls, w_patch, w_mim)."""
        return self.w_cls, self.w_patch, self.w_mim


@register_method("smkd")
class SMKD(Method):
    """SMKD / iBOT self-distillation with an EMA teacher (see module docstring)."""

    teacher_update = "ema"

    Config = SMKDConfig

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        m = self.mcfg
        self.w_cls, self.w_patch, self.w_mim = m.weights
        vit = build_backbone(cfg.model.arch, pretrained=cfg.model.pretrained,
                             drop_path=cfg.model.drop_path, image_size=cfg.data.image_size)
        if not hasattr(vit, "patch_embed"):
            raise ConfigError(f"model.arch: SMKD needs a ViT backbone, got {cfg.model.arch!r}")
        backbone = MaskedViT(vit, mask_token=cfg.data.mask_prob > 0)
        head = IBOTHead(backbone.num_features, out_dim=m.out_dim, hidden_dim=m.hidden_dim,
                        bottleneck_dim=m.bottleneck_dim, norm_last_layer=m.norm_last_layer)
        patch_outputs = self.w_patch > 0 or self.w_mim > 0
        self.student = MultiCropModel(backbone, head, patch_outputs=patch_outputs)
        self.teacher = frozen_copy(self.student)
        self.cls_center = Center(m.out_dim, m.center_momentum)
        self.patch_center = Center(m.out_dim, m.center_momentum) if patch_outputs else None
        self._pending: tuple[Tensor, Tensor | None] | None = None  # teacher outputs for centres

    # ------------------------------------------------------------------ checks
    @classmethod
    def preflight(cls, cfg: ExperimentConfig, data: DataInfo) -> None:
        m, d = cfg.method_cfg, cfg.data
        if d.augment != "multicrop" or d.global_crops != N_GLOBAL:
            raise ConfigError("data.augment/global_crops: SMKD needs augment='multicrop' with "
                              f"global_crops=2, got {d.augment!r} with {d.global_crops}")
        p = arch_patch_size(cfg.model.arch)
        if p is None:
            raise ConfigError(f"model.arch: SMKD needs a timm ViT backbone (e.g. vit_tiny_p4_32, "
                              f"vit_small_p16), got {cfg.model.arch!r}")
        if d.patch_size != p:
            raise ConfigError(f"data.patch_size={d.patch_size} must equal the ViT patch size {p} "
                              f"of {cfg.model.arch!r} (masks are drawn on the patch grid)")
        if d.local_crops and d.local_size % p:
            raise ConfigError(f"data.local_size={d.local_size} must be a multiple of patch {p}")
        if m.weights[2] > 0 and d.mask_prob <= 0:
            raise ConfigError("method_cfg.w_mim > 0 needs masked crops: set data.mask_prob > 0 "
                              "(iBOT/SMKD: 0.5) or method_cfg.w_mim=0")
        if m.phase == "supervised" and not cfg.train.init_from and not m.allow_scratch:
            raise ConfigError("phase 2 needs a phase-1 checkpoint: run phase 1 first "
                              "(method_cfg.phase=ssl) and pass it as train.init_from, or set "
                              "method_cfg.allow_scratch=true to train phase 2 from scratch")
        if cfg.train.init_from and not os.path.exists(cfg.train.init_from):
            raise ConfigError(f"train.init_from: nothing at {cfg.train.init_from!r}")
        if cfg.eval.kind == "top1":
            raise ConfigError("eval.kind='top1': SMKD has no classifier; use 'fewshot'")

    # ------------------------------------------------------------------ training
    def teacher_temp(self, step: Step) -> float:
        """Linear warm-up of the teacher temperature over the first epochs, then constant."""
        m = self.mcfg
        return warmup_then_constant(step.epoch_float, m.warmup_teacher_temp, m.teacher_temp,
                                    m.warmup_teacher_temp_epochs)

    def forward(self, batch: Batch, step: Step) -> LossDict:
        views = batch.views if self.w_cls > 0 else batch.views[:N_GLOBAL]
        if self.w_mim > 0 and batch.masks is None:
            raise ValueError("w_mim > 0 needs batch.masks (set data.mask_prob > 0)")
        s = self.student(views, batch.masks)                    # the single DDP entry point
        with torch.no_grad():
            t = self.teacher(batch.views[:N_GLOBAL], None,
                             return_attn=self.w_patch > 0 and self.mcfg.wk_mode == "attention")
        supervised = self.mcfg.phase == "supervised"
        if supervised and batch.labels is None:
            raise ValueError("phase 'supervised' needs batch.labels")
        labels = batch.labels if supervised else torch.arange(len(batch), device=s.cls.device)
        temp, out = self.teacher_temp(step), {}
        if self.w_cls > 0:
            out["cls"] = self._cls_term(s, t, labels, temp, supervised)
        out.update(self._patch_terms(s, t, batch, labels, temp))
        self._pending = (t.cls.detach(), None if t.patch is None else t.patch.mean(1).detach())
        loss = weighted_sum(out, {"cls": self.w_cls, "patch": self.w_patch, "mim": self.w_mim})
        health = teacher_health(F.softmax(self.cls_center(t.cls.float()) / temp, dim=-1))
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}, **health}

    def _cls_term(self, s: MultiCropOutput, t: MultiCropOutput, labels: Tensor, temp: float,
                  supervised: bool) -> Tensor:
        b = labels.shape[0]
        t_probs = F.softmax(self.cls_center(t.cls.float()) / temp, dim=-1).view(N_GLOBAL, b, -1)
        s_logp = F.log_softmax(s.cls.float() / self.mcfg.student_temp, dim=-1)
        s_logp = s_logp.view(-1, b, s_logp.shape[-1])              # (V, B, K)
        same_image = not (supervised and self.mcfg.cls_impl == "official")
        pairs = L.cls_pair_mask(labels, N_GLOBAL, s_logp.shape[0], same_image=same_image)
        return L.cls_loss(t_probs, s_logp, pairs)

    def _patch_terms(self, s: MultiCropOutput, t: MultiCropOutput, batch: Batch, labels: Tensor,
                     temp: float) -> dict[str, Tensor]:
        if s.patch is None:
            return {}
        b = labels.shape[0]
        grid = (N_GLOBAL, b) + tuple(s.patch.shape[1:])
        t_probs = F.softmax(self.patch_center(t.patch.float()) / temp, dim=-1).view(grid)
        s_logp = F.log_softmax(s.patch.float() / self.mcfg.student_temp, dim=-1).view(grid)
        out = {}
        if self.w_mim > 0:
            masks = torch.stack(batch.masks).flatten(2)          # (G, B, N)
            out["mim"] = L.mim_loss(t_probs, s_logp, masks)
        if self.w_patch > 0:
            t_feat, s_feat = t.feat.view(grid[:3] + (-1,)), s.feat.detach().view(grid[:3] + (-1,))
            attn = None if t.attn is None else t.attn.float().view(grid[:3])
            if self.mcfg.patch_impl == "official":
                out["patch"] = L.patch_loss_official(t_probs, s_logp, t_feat, s_feat, labels, attn)
            else:
                weight = attn if attn is not None else torch.full(grid[:3], 1.0 / grid[2],
                                                                  device=s_logp.device)
                pairs = L.global_pair_mask(labels, N_GLOBAL, same_image=True)
                out["patch"] = L.patch_loss_paper(t_probs, s_logp, t_feat, s_feat, weight, pairs)
        return out

    def on_after_backward(self, step: Step) -> None:
        if step.epoch < self.cfg.optim.freeze_last_layer_epochs:
            for p in unwrap(self.student).head.last_layer.parameters():
                p.grad = None   # DINO/iBOT: the optimizer skips the last layer entirely

    @torch.no_grad()
    def after_step(self, step: Step) -> None:
        ema_update_(self.teacher, self.student, ema_momentum(step.progress, self.mcfg.ema_momentum))
        if self._pending is not None:
            t_cls, t_patch = self._pending
            self.cls_center.update(t_cls)
            if t_patch is not None and self.patch_center is not None:
                self.patch_center.update(t_patch)   # per-image patch mean, then batch mean
            self._pending = None

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 2D): teacher [CLS] and attention-pooled patches, each L2-normalised."""
        out = self.teacher.backbone(x, None, return_attn=True)
        pooled = (out.attn.unsqueeze(-1) * out.patch).sum(1)
        return torch.cat([F.normalize(out.cls, dim=-1), F.normalize(pooled, dim=-1)], dim=-1)

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError("SMKD has no classifier; evaluate with eval.kind='fewshot'")

    # ------------------------------------------------------------------ checkpoints
    def load_phase1(self, path: str) -> None:
        """Load student, teacher and centres from a kdray checkpoint file or directory.

        A mask token present on one side only is tolerated (phase 2 may run without masking);
        any other missing, unexpected or mis-shaped weight raises ConfigError. Optimizer state
        and schedules are not restored: phase 2 restarts them, as the SMKD code does.
        """
        from kdray.checkpoint import load_checkpoint  # weights_only=True

        try:
            ckpt = load_checkpoint(path)
        except FileNotFoundError as e:
            raise ConfigError(f"train.init_from: {e}; run phase 1 first") from e
        model = ckpt.get("model") if isinstance(ckpt, dict) else None
        if not isinstance(model, dict) or not {"student", "teacher"} <= set(model):
            raise ConfigError(f"train.init_from {path!r} is not a kdray SMKD checkpoint "
                              "(needs model.student and model.teacher)")
        for name in ("student", "teacher", "cls_center", "patch_center"):
            module = getattr(self, name)
            if module is None or name not in model:
                log.info("init_from: %s not loaded (absent in model or checkpoint)", name)
                continue
            load_strict(unwrap(module), model[name], source=f"train.init_from {path!r} ({name})",
                        what="this model (same model.arch and head dims needed)",
                        optional=("mask_token",))

    init_from_checkpoint = load_phase1   # the engine's `train.init_from` hook
