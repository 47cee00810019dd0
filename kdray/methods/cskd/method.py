"""Cumulative Spatial KD: "Cumulative Spatial Knowledge Distillation for Vision Transformers"
(Zhao, Song & Liang, ICCV 2023, arXiv:2307.08500; official code Zzzzz1/CSKD, built on DeiT).

A frozen CNN teacher gives dense logits P_T (its linear classifier at every position of the last
feature map); a distilled DeiT student passes its patch tokens through the distillation head and
learns each position's class from the teacher (spatial knowledge without feature alignment).
Cumulative knowledge fusion moves those targets from the local to the global teacher response
as training goes on: Y_T = argmax_c [alpha * P_T + (1 - alpha) * P_T,global], alpha 1 -> 1/E.

Terms (docs/methods/cskd.md §4.2; paper Eq. 1-3): `base` = SoftTargetCE([CLS] logits, mixup/CutMix targets
with label smoothing); `distill` = DeiT hard distillation CE(dist-token logits, argmax P_T,global);
`cskd` = CE(pooled patch logits, Y_T) over all teacher positions (hard) or tau^2 KL summed over
positions / B (soft). L = w_base base + w_distill distill + w_cskd cskd, where w_distill is
DeiT's alpha (`deit_alpha`, the CE/distillation mixing weight) and w_base = 1 - w_distill.
Inference averages the heads that are trained: (cls + dist + mean patch logits) / 3 for CSKD.

Settings: w_distill = w_cskd = 0 trains a plain DeiT (no teacher, no distillation token);
w_cskd = 0 is DeiT hard distillation (inference (cls + dist) / 2, as DeiT). Deviations from the official code:
the alpha schedule also takes endpoints and the `cosine`/`constant` shapes; with w_distill = 0 the
distillation-token head is left out of the inference average (the code always averages three);
the teacher is not stored in checkpoints (it is rebuilt from model.teacher_ckpt or the hub).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from kdray.checks import ConfigError, check_choice, check_range
from kdray.dist import unwrap
from kdray.methods.base import Method
from kdray.methods.cskd import losses as L
from kdray.methods.cskd.deit import DeiTStudent, average_heads, build_deit
from kdray.methods.cskd.dense import DenseTeacher, check_dense_consistent
from kdray.modules.backbones import BACKBONES
from kdray.modules.losses import term_weights, weighted_sum
from kdray.modules.mixing import mix_images, mix_targets, soft_target_ce
from kdray.modules.teachers import build_teacher, build_timm_teacher, freeze, load_model_state
from kdray.registry import register_method
from kdray.search import Choice, Float
from kdray.types import Batch, DataInfo, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig


@dataclass(frozen=True)
class CSKDConfig:
    w_distill: float = 0.5           # deit_alpha, configs/cskd_{tiny,small,base}.py; base: 1 - it
    w_cskd: float = 1.0              # cksd_loss_weight (sic), same configs
    alpha_schedule: str = "linear"   # cskd_decay_func: linear | x2 | cos (+ cosine | constant)
    alpha_start: float = 1.0         # alpha at epoch 0 (official: 1)
    alpha_end: float = 0.0           # alpha the schedule heads for at epoch E (official: 0)
    cskd_loss: str = "hard"          # cskd_loss_type: hard | soft
    distill_loss: str = "hard"       # deit_loss_type: hard | soft
    tau: float = 1.0                 # deit_tau, used by the soft variants
    label_smoothing: float = 0.1     # DeiT recipe (smoothing of the mixup targets)

    SEARCH: ClassVar[dict] = {
        "w_distill": Float(0.25, 0.75),                         # paper uses 1/2 (L = ½CE + ½distill)
        "w_cskd": Float(0.5, 2.0),                       # docs/searching.md §6 suggestion
        "alpha_schedule": Choice(["linear", "x2", "cos"]),  # the official decay functions
        "alpha_start": Float(0.5, 1.0),
        "alpha_end": Float(0.0, 0.5),
        "cskd_loss": Choice(["hard", "soft"]),
        "tau": Float(0.5, 4.0),
    }

    def __post_init__(self) -> None:
        check_range("method_cfg.w_distill", self.w_distill, 0.0, 1.0)
        check_range("method_cfg.w_cskd", self.w_cskd, 0.0, 100.0)
        check_choice("method_cfg.alpha_schedule", self.alpha_schedule, tuple(L.SHAPES))
        check_range("method_cfg.alpha_start", self.alpha_start, 0.0, 1.0)
        check_range("method_cfg.alpha_end", self.alpha_end, 0.0, 1.0)
        check_choice("method_cfg.cskd_loss", self.cskd_loss, ("hard", "soft"))
        check_choice("method_cfg.distill_loss", self.distill_loss, ("hard", "soft"))
        check_range("method_cfg.tau", self.tau, 0.0, 100.0, low_open=True)
        check_range("method_cfg.label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)

    @property
    def w_base(self) -> float:
        """Weight of the [CLS] term: DeiT's 1 - alpha."""
        return 1.0 - self.w_distill

    @property
    def uses_teacher(self) -> bool:
        return self.w_distill > 0 or self.w_cskd > 0


def build_student(cfg: ExperimentConfig, num_classes: int) -> DeiTStudent:
    m = cfg.method_cfg
    vit = build_deit(cfg.model.arch, num_classes, distilled=m.uses_teacher,
                     image_size=cfg.data.image_size, drop_path=cfg.model.drop_path,
                     pretrained=cfg.model.pretrained)
    return DeiTStudent(vit, dense=m.w_cskd > 0)


def build_dense_teacher(cfg: ExperimentConfig, num_classes: int) -> DenseTeacher:
    """The frozen dense-logit teacher: kdray checkpoints (of a kdray or timm backbone) load into
    a kdray classifier, plain timm state_dicts and hub weights into the timm model
    (`kdray.modules.teachers`)."""
    arch, ckpt = cfg.model.teacher_arch, cfg.model.teacher_ckpt
    if not arch:
        raise ConfigError("model.teacher_arch: Cumulative Spatial KD needs a CNN teacher, e.g. "
                          "regnety_160.deit_in1k (hub) or conv3 trained with method ce")
    kdray_ckpt = bool(ckpt) and any(k.startswith("backbone.") for k in load_model_state(ckpt))
    if arch in BACKBONES or kdray_ckpt:
        if not ckpt:
            raise ConfigError(f"model.teacher_ckpt: a trained {arch!r} teacher checkpoint is "
                              "needed (train one with method ce and pass its checkpoint.pt)")
        net = build_teacher(cfg, num_classes)
    else:
        net = build_timm_teacher(arch, ckpt, num_classes)
    try:
        teacher = DenseTeacher(net)
    except ValueError as e:
        raise ConfigError(f"model.teacher_arch: {e}") from None
    return freeze(teacher)


@register_method("cskd")
class CSKD(Method):
    """Cumulative Spatial KD from a frozen dense CNN teacher (see module docstring)."""

    Config = CSKDConfig
    supports_mix = True

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.student = build_student(cfg, num_classes)
        if self.mcfg.uses_teacher:
            self.teacher = build_dense_teacher(cfg, num_classes)

    # ------------------------------------------------------------------ checks
    @classmethod
    def preflight(cls, cfg: ExperimentConfig, data: DataInfo) -> None:
        n = data.num_classes
        try:
            student = build_student(cfg, n)
        except ValueError as e:
            raise ConfigError(f"model.arch: {e}") from None
        if not (cfg.method_cfg.uses_teacher or cfg.model.teacher_ckpt):
            return  # a given teacher is checked even when unused: study rows share one preflight
        teacher = build_dense_teacher(cfg, n)
        try:
            t_grid = check_dense_consistent(teacher, cfg.data.image_size)
        except ValueError as e:
            raise ConfigError(f"model.teacher_arch: {e}") from None
        s_grid = tuple(int(g) for g in student.vit.patch_embed.grid_size)
        if any(s % t for s, t in zip(s_grid, t_grid)):
            raise ConfigError(f"model.teacher_arch: teacher grid {t_grid} must divide the "
                              f"student's patch grid {s_grid} at data.image_size="
                              f"{cfg.data.image_size} (paper: 14x14 patches -> 7x7)")

    # ------------------------------------------------------------------ training
    def alpha(self, step: Step) -> float:
        """Weight of the local teacher response, stepped per epoch."""
        m = self.mcfg
        epochs = max(1, step.total_its // max(1, step.its_per_epoch))
        return L.alpha_at(step.epoch, epochs, shape=m.alpha_schedule, start=m.alpha_start,
                          end=m.alpha_end)

    def forward(self, batch: Batch, step: Step) -> LossDict:
        m = self.mcfg
        x = mix_images(batch.views[0], batch.mix)          # the teacher sees the mixed images
        s = self.student(x)
        base = soft_target_ce(s.cls, mix_targets(batch.labels, batch.mix, self.num_classes,
                                                 m.label_smoothing))
        terms, out = {"base": base}, {}
        if self.teacher is not None:
            with torch.no_grad():
                t_dense = self.teacher(x).float()          # (B, C, h, w)
            if m.w_distill > 0:
                terms["distill"] = self._distill(s.dist, t_dense.mean(dim=(2, 3)))
            if m.w_cskd > 0:
                alpha = self.alpha(step)
                terms["cskd"] = self._cskd(s.dense, s.grid, L.fuse_teacher(t_dense, alpha))
                out["alpha"] = torch.tensor(alpha, device=x.device)
        return {**{k: v.detach() for k, v in terms.items()}, **out,
                "loss": weighted_sum(terms, term_weights(m, terms))}

    def _distill(self, s_dist: torch.Tensor, t_global: torch.Tensor) -> torch.Tensor:
        if self.mcfg.distill_loss == "soft":
            return L.distill_soft(s_dist, t_global, self.mcfg.tau)
        return L.distill_hard(s_dist, t_global)

    def _cskd(self, s_dense: torch.Tensor, grid: tuple[int, int], fused: torch.Tensor
              ) -> torch.Tensor:
        pooled = L.pool_student(s_dense, grid, tuple(fused.shape[-2:]))
        if self.mcfg.cskd_loss == "soft":
            return L.cskd_soft(pooled, fused, self.mcfg.tau)
        return L.cskd_hard(pooled, fused)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """As the base class, plus DeiT's exclusions (positions, [CLS] and distillation tokens)."""
        skip = unwrap(self.student).no_weight_decay()
        decay, no_decay = [], []
        for name, p in unwrap(self.student).named_parameters():
            if p.requires_grad:
                flat = p.ndim <= 1 or name.endswith(".bias") or name in skip
                (no_decay if flat else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0, "no_decay": True}]

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C): the average of the trained heads."""
        out = unwrap(self.student)(x)
        return average_heads(out, use_dist=self.mcfg.w_distill > 0, use_dense=self.mcfg.w_cskd > 0)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """The CNN teacher's own pooled output (B, C), as it classifies."""
        return self.teacher.global_logits(x) if self.teacher is not None else None

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, dict]:
        """The student only: the frozen teacher is rebuilt from its own source."""
        return {"student": unwrap(self.student).state_dict()}

    def load_checkpoint_state(self, state: dict[str, dict], strict: bool = True) -> None:
        unwrap(self.student).load_state_dict(state["student"], strict=strict)
