"""MKD: "Masked Autoencoders Are Stronger Knowledge Distillers" (Lao et al., ICCV 2023).

A frozen teacher detector (FPN) sees the clean image; the student detector sees it with random
stride-32 grid cells masked (masked convolution in every conv of its backbone body,
docs/methods/mkd.md §2.1). An adaptive decoder (train-only) regresses the student's FPN levels onto the teacher's:
L_feat = sum_i 1/(2 N_i) ||norm F_T,i - F_hat_S,i||^2, plus FGD's GcBlock global loss L_global.
L = L_task + w_feat L_feat + w_global L_global (docs/methods/mkd.md §2.2), logged as "task", "feat",
"global". The task loss is the torchvision detector's loss dict summed, computed on the masked
forward (task_on="masked") or on an extra unmasked forward (task_on="unmasked", default: the safer
design docs/methods/mkd.md §2.3 suggests; the paper does not say).

Variants through the config: mask_ratio=0 and decoder_depth=0 is FGD-style feature MSE through
a 1x1 align conv only; w_feat = w_global = 0 trains the detector alone (no teacher is built).
The decoder, align convs and GcBlocks live in `student` (one DDP module) and are unused at
inference; the teacher is not checkpointed (rebuilt from model.teacher_ckpt).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from kdray.checks import ConfigError, check_choice, check_range
from kdray.dist import unwrap
from kdray.methods.base import Method
from kdray.methods.mkd.decoder import POS_EMBEDS, AdaptiveDecoder, grid_size
from kdray.methods.mkd.losses import NORMS, GlobalRelationLoss, feat_loss
from kdray.methods.mkd.mask import MaskedConvHooks, convert_visible_bn, random_mask
from kdray.modules import detectors as D
from kdray.modules.teachers import freeze, load_model_state, load_strict
from kdray.registry import register_method
from kdray.search import Choice, Float
from kdray.types import Batch, DataInfo, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig


@dataclass(frozen=True)
class MKDConfig:
    detector: str = "retinanet"      # retinanet | faster_rcnn (student and teacher family)
    w_feat: float = 1.0              # lambda [inferred: L_feat is a mean on normalised features]
    w_global: float = 5e-6           # gamma [inferred: FGD's RetinaNet global weight, sum / B]
    mask_ratio: float = 0.5          # [inferred; not retrieved]
    decoder_depth: int = 2           # [inferred]; 0 = no decoder, per-level 1x1 align only
    decoder_dim: int = 256           # [inferred]
    decoder_heads: int = 8           # [inferred]
    pos_embed: str = "sincos"        # [inferred] sincos | learned | none
    norm: str = "channel"            # [inferred] normalisation before the MSE: channel|layernorm|none
    masked_only: bool = False        # [inferred ablation] L_feat over masked positions only
    task_on: str = "unmasked"        # [inferred] masked | unmasked (extra clean student forward)
    visible_bn: bool = False         # [inferred] BN statistics over visible positions only
    fpn_channels: int = 256          # student FPN width (torchvision / mmdetection: 256)
    teacher_fpn_channels: int = 256  # teacher FPN width

    SEARCH: ClassVar[dict] = {       # docs/methods/mkd.md §2.2 / docs/searching.md §6 suggestions
        "w_feat": Float(0.1, 10.0, log=True),
        "w_global": Float(1e-7, 1e-4, log=True),
        "mask_ratio": Choice([0.25, 0.5, 0.65, 0.75]),
        "decoder_depth": Choice([1, 2, 4]),
    }

    def __post_init__(self) -> None:
        check_choice("method_cfg.detector", self.detector, D.FAMILIES)
        check_range("method_cfg.w_feat", self.w_feat, 0.0)
        check_range("method_cfg.w_global", self.w_global, 0.0)
        check_range("method_cfg.mask_ratio", self.mask_ratio, 0.0, 1.0, high_open=True)
        check_range("method_cfg.decoder_depth", self.decoder_depth, 0, 64)
        check_range("method_cfg.decoder_dim", self.decoder_dim, 4)
        check_range("method_cfg.decoder_heads", self.decoder_heads, 1)
        check_choice("method_cfg.pos_embed", self.pos_embed, POS_EMBEDS)
        check_choice("method_cfg.norm", self.norm, NORMS)
        check_choice("method_cfg.task_on", self.task_on, ("masked", "unmasked"))
        check_range("method_cfg.fpn_channels", self.fpn_channels, 1)
        check_range("method_cfg.teacher_fpn_channels", self.teacher_fpn_channels, 1)
        if self.decoder_depth and self.decoder_dim % self.decoder_heads:
            raise ConfigError("method_cfg.decoder_dim must be divisible by decoder_heads")
        if self.masked_only and self.mask_ratio == 0:
            raise ConfigError("method_cfg.masked_only needs method_cfg.mask_ratio > 0")

    @property
    def uses_teacher(self) -> bool:
        return self.w_feat > 0 or self.w_global > 0


def build_student_detector(cfg: ExperimentConfig, num_classes: int) -> nn.Module:
    m = cfg.method_cfg
    try:
        return D.build_detector(m.detector, cfg.model.arch, num_classes,
                                fpn_channels=m.fpn_channels, pretrained=cfg.model.pretrained,
                                image_size=cfg.data.image_size)
    except ValueError as e:
        raise ConfigError(f"model.arch: {e}") from None


def teacher_state(path: str) -> dict[str, Tensor]:
    """Detector weights from a kdray checkpoint (its student's `detector.*`) or a torchvision
    state_dict file; raises ConfigError when there is no file."""
    return load_model_state(path, prefix="detector.")


def build_teacher(cfg: ExperimentConfig, num_classes: int) -> nn.Module:
    """The frozen teacher detector (model.teacher_arch, same family); ConfigError if it does not
    fit model.teacher_ckpt."""
    m, arch, ckpt = cfg.method_cfg, cfg.model.teacher_arch or cfg.model.arch, cfg.model.teacher_ckpt
    if not ckpt:
        raise ConfigError("model.teacher_ckpt: MKD needs a trained teacher detector (a kdray "
                          "checkpoint of method mkd with w_feat=w_global=0, or a torchvision "
                          "state_dict); set method_cfg.w_feat=0 and w_global=0 to train without")
    try:
        net = D.build_detector(m.detector, arch, num_classes, fpn_channels=m.teacher_fpn_channels,
                               image_size=cfg.data.image_size)
    except ValueError as e:
        raise ConfigError(f"model.teacher_arch: {e}") from None
    # torchvision checkpoints have FrozenBatchNorm2d: no num_batches_tracked
    load_strict(net, teacher_state(ckpt), source=f"model.teacher_ckpt {ckpt!r}",
                what=f"a {m.detector} {arch} teacher with {num_classes} classes and FPN width "
                     f"{m.teacher_fpn_channels}",
                keep_own=lambda k: k.endswith("num_batches_tracked"))
    return freeze(net)


class MKDStudent(nn.Module):
    """Student detector + train-only distillation modules; `forward` is the whole training step
    of the trainable part (one DDP entry point). See `MKD` for the arguments."""

    def __init__(self, cfg: ExperimentConfig, num_classes: int) -> None:
        super().__init__()
        m = cfg.method_cfg
        self.m = m
        self.detector = build_student_detector(cfg, num_classes)
        strides = D.STRIDES[m.detector]
        c_s, c_t = m.fpn_channels, m.teacher_fpn_channels
        self.decoder: nn.Module | None = None
        if m.uses_teacher and m.decoder_depth > 0:
            self.decoder = AdaptiveDecoder(strides=strides, in_channels=c_s, out_channels=c_t,
                                           dim=m.decoder_dim, depth=m.decoder_depth,
                                           heads=m.decoder_heads, pos_embed=m.pos_embed)
        elif m.uses_teacher:  # FGD-style: a 1x1 align conv per level
            self.decoder = nn.ModuleList(nn.Conv2d(c_s, c_t, 1) for _ in strides)
        self.global_loss = GlobalRelationLoss(c_t, len(strides)) if m.w_global > 0 else None
        self.hooks = None
        if m.mask_ratio > 0:
            body = self.detector.backbone.body
            if m.visible_bn:
                convert_visible_bn(body)
            self.hooks = MaskedConvHooks(body)

    def decode(self, feats: list[Tensor], mask: Tensor) -> list[Tensor]:
        """F_hat_S: decoder (or 1x1 align) outputs, one (B, C_T, H_i, W_i) per level."""
        if isinstance(self.decoder, AdaptiveDecoder):
            return self.decoder(feats, mask)
        return [conv(f) for conv, f in zip(self.decoder, feats)]

    def forward(self, images, targets: list[dict], mask: Tensor | None,
                t_feats: list[Tensor] | None) -> dict[str, Tensor]:
        m, backbone = self.m, self.detector.backbone
        masked = None  # no masked forward when nothing uses it (no teacher, clean task loss)
        if t_feats is not None or m.task_on == "masked" or mask is None:
            with self.hooks.masked(mask) if self.hooks is not None else nullcontext():
                masked = backbone(images.tensors)
        task_feats = masked if m.task_on == "masked" or mask is None else backbone(images.tensors)
        task = sum(D.task_losses(self.detector, images, task_feats, targets).values())
        out = {"task": task}
        if t_feats is not None:
            grid_mask = mask if mask is not None else torch.zeros(
                images.tensors.shape[0], 1, *grid_size(*images.tensors.shape[-2:]),
                dtype=torch.bool, device=images.tensors.device)
            hat = self.decode(D.levels(self.detector, masked), grid_mask)
            if m.w_feat > 0:
                out["feat"] = feat_loss(t_feats, hat, mask=grid_mask, masked_only=m.masked_only,
                                        norm=m.norm)
            if self.global_loss is not None:
                out["global"] = self.global_loss(t_feats, hat)
        return out


@register_method("mkd")
class MKD(Method):
    """Masked-input feature distillation for detectors (see module docstring).

    `forward(batch, step)` needs ``batch.views[0]`` (B, 3, H, W) in [0, 1], zero-padded, and
    ``batch.extra["targets"]`` (per image "boxes" xyxy, "labels" 0..K-1); ``extra["sizes"]``
    (unpadded (h, w) per image) is optional. `detect(images, sizes)` is what the COCO evaluator
    calls.
    """

    Config = MKDConfig
    needs_labels = False

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.student = MKDStudent(cfg, num_classes)
        if self.mcfg.uses_teacher:
            self.teacher = build_teacher(cfg, num_classes)

    @classmethod
    def preflight(cls, cfg: ExperimentConfig, data: DataInfo) -> None:
        if not data.detection:
            raise ConfigError(f"data.dataset: MKD trains detectors; {cfg.data.dataset!r} is not a "
                              "detection dataset (coco128, coco, shapes_det)")
        if cfg.eval.kind not in ("coco", "none"):
            raise ConfigError(f"eval.kind: MKD is evaluated with 'coco' (or 'none'), got "
                              f"{cfg.eval.kind!r}")
        n = data.num_classes
        build_student_detector(cfg, n)
        if cfg.method_cfg.uses_teacher or cfg.model.teacher_ckpt:
            build_teacher(cfg, n)  # a given teacher is checked even when unused (study rows)

    def forward(self, batch: Batch, step: Step) -> LossDict:
        m, x = self.mcfg, batch.views[0]
        images = D.image_list(x, batch.extra.get("sizes"))
        mask = None
        if m.mask_ratio > 0:
            mask = random_mask(x.shape[0], x.shape[-2], x.shape[-1], m.mask_ratio,
                               device=x.device)
        t_feats = None
        if self.teacher is not None:
            with torch.no_grad():
                t_feats = [f.float() for f in D.levels(self.teacher,
                                                       self.teacher.backbone(images.tensors))]
        terms = self.student(images, batch.extra["targets"], mask, t_feats)
        loss = terms["task"]
        if "feat" in terms:
            loss = loss + m.w_feat * terms["feat"]
        if "global" in terms:
            loss = loss + m.w_global * terms["global"]
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def detect(self, images: Tensor, sizes: list[tuple[int, int]] | None = None) -> list[dict]:
        """(B, 3, H, W) zero-padded images in [0, 1] -> per image {"boxes" (N, 4) xyxy in input
        pixels, "scores" (N,), "labels" (N,) in 0..K-1}. Call in eval mode."""
        det = unwrap(self.student).detector
        il = D.image_list(images, sizes)
        return D.detect(det, il, det.backbone(il.tensors))

    def checkpoint_state(self) -> dict[str, dict]:
        """The student only: the frozen teacher is rebuilt from model.teacher_ckpt."""
        return {"student": unwrap(self.student).state_dict()}

    def load_checkpoint_state(self, state: dict[str, dict], strict: bool = True) -> None:
        unwrap(self.student).load_state_dict(state["student"], strict=strict)
