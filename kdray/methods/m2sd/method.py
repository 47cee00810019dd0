"""M2SD: "Multiple Mixing Self-Distillation for Few-Shot Class-Incremental Learning" (AAAI 2024;
no official code, no arXiv id; docs/methods/m2sd.md §5).

Stage 2 of the paper (this method; stage 1 is plain `ce` base training, stage 3 the prototype
classifier of `eval.kind=fscil`): each base-session image is paired with an image of a different
class; the same (i, j, λ), λ ~ Beta(α, α), builds a mixup and an inside-the-image CutMix virtual
instance with the soft label λ y_i + (1 - λ) y_j. A train-only feature-enhancement module FE
(per-stage MHSA / coordinate attention, BiFPN, temporary classifier W′; `kdray.methods.m2sd.enhance`)
produces a soft label and attention maps the backbone distils from.

Terms (unweighted in the log; loss = Σ w_<term> term):
- `mix`   L_ce^v = Σ_{k ∈ {I, II}} CE(y_v, f(x_k)) over the branches that are on.
- `kl`    L_KL^v = KL(f(x_I) ‖ f(x_II)) + KL(f(x_II) ‖ f(x_I)) at temperature `kl_temp` (×T²);
          needs both branches.
- `sd`    KL(p̂ ‖ f(x)), p̂ = softmax(W′(T_last)) on clean images (first term of L_AT).
- `at`    Σ_i ‖at(T_i) − at(φ_i(x))‖²₂, at = L2-normalised Σ_c F_c² (second term of L_AT).
- `aux`   CE(y, W′(T_last)) on clean images: supervises FE and W′.
- `ce`    CE(y, f(x)) on clean images (0 in the paper's total; the prototype-baseline row).
The paper's total is mix + kl + sd + at (all weights 1).

[inferred] (not in the paper, docs/methods/m2sd.md §5.2; each is a config field with this default): α = 0.5
(FACT); KL temperature 1; the teacher side of `sd` and `at` (p̂, T_i) is detached; the `aux` term
(weight 1) trains FE and W′, which the paper's total leaves unsupervised; one λ and one CutMix box
per batch, λ recomputed from the integer box area and used by both branches so that their labels
are identical; the EN layout for 3-stage ResNets (MHSA, CA, MHSA), MHSA details and BiFPN details
(see `kdray.methods.m2sd.enhance`). FE is built only when `w_sd` or `w_at` is > 0; the mixing
branches only when `mixup` / `cutmix` is on. Mixing randomness comes from a generator seeded by
(seed, rank, step), so a resumed run draws the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdray import dist
from kdray.checks import ConfigError, check, check_range
from kdray.dist import unwrap
from kdray.methods.base import Method
from kdray.methods.m2sd.enhance import FeatureEnhancer
from kdray.methods.m2sd.losses import at_loss, soft_label_kl, symmetric_kl
from kdray.modules import mixing
from kdray.modules.backbones import build_backbone
from kdray.modules.health import teacher_health
from kdray.modules.losses import term_weights, weighted_sum
from kdray.modules.teachers import load_strict
from kdray.registry import register_method
from kdray.search import Choice, Float
from kdray.types import Batch, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig

_MIX_SALT = 0x6D32736D


@dataclass(frozen=True)
class M2SDConfig:
    alpha: float = 0.5               # Beta(α, α) [inferred: FACT's 0.5; docs/searching.md §6 range {0.2, 0.5, 1}]
    mixup: bool = True               # branch I
    cutmix: bool = True              # branch II
    w_mix: float = 1.0               # L_ce^v (paper: 1)
    w_kl: float = 1.0                # L_KL^v (paper: 1)
    kl_temp: float = 1.0             # [inferred]
    w_sd: float = 1.0                # KL(p̂ ‖ f(x)) of L_AT (paper: 1)
    w_at: float = 1.0                # attention-map transfer of L_AT (paper: 1)
    w_aux: float = 1.0               # CE of W′ on clean images [inferred]
    w_ce: float = 0.0                # CE of W on clean images (not in the paper's total)
    detach_teacher: bool = True      # p̂ and T_i act as targets [inferred]
    distill_warmup: float = 0.0      # epochs over which w_sd, w_at ramp 0 -> 1 while `aux` trains FE
                                     # and W′ (kdray; 0 = the paper's total from the first step)
    en_layout: tuple[str, ...] = ()  # per stage "mhsa" | "ca"; () = MHSA at the ends, CA between
    mhsa_heads: int = 4              # [inferred]
    mhsa_max_side: int = 16          # MHSA on at most 16 x 16 pooled positions [inferred]
    ca_reduction: int = 32           # coordinate attention (Hou et al.), min 8 channels
    fe_channels: int = 64            # BiFPN width [inferred]

    SEARCH: ClassVar[dict] = {       # docs/searching.md §6: α ∈ {0.2, 0.5, 1}, weights ∈ [0.1, 10]
        "alpha": Choice([0.2, 0.5, 1.0]),
        "w_mix": Float(0.1, 10.0, log=True), "w_kl": Float(0.1, 10.0, log=True),
        "w_sd": Float(0.1, 10.0, log=True), "w_at": Float(0.1, 10.0, log=True),
        "kl_temp": Float(1.0, 4.0),
    }

    def __post_init__(self) -> None:
        check_range("method_cfg.alpha", self.alpha, 0.0, 100.0, low_open=True)
        for k in ("w_mix", "w_kl", "w_sd", "w_at", "w_aux", "w_ce"):
            check_range(f"method_cfg.{k}", getattr(self, k), 0.0, 1000.0)
        check_range("method_cfg.kl_temp", self.kl_temp, 0.0, 100.0, low_open=True)
        check_range("method_cfg.distill_warmup", self.distill_warmup, 0.0)
        for k in ("mhsa_heads", "mhsa_max_side", "ca_reduction", "fe_channels"):
            check_range(f"method_cfg.{k}", getattr(self, k), 1)
        for kind in self.en_layout:
            check(kind in ("mhsa", "ca"), "method_cfg.en_layout", f"entries are mhsa | ca: {kind!r}")
        check(not (self.enhance and self.detach_teacher and self.w_aux == 0),
              "method_cfg.w_aux", "must be > 0 when the FE module is on and its targets are "
              "detached (nothing else trains it)")
        check(self.branches or self.enhance or self.w_ce > 0, "method_cfg",
              "every term is off (turn on a mixing branch, w_sd/w_at or w_ce)")

    @property
    def enhance(self) -> bool:
        return self.w_sd > 0 or self.w_at > 0

    @property
    def branches(self) -> tuple[str, ...]:
        return tuple(b for b, on in (("mixup", self.mixup), ("cutmix", self.cutmix)) if on)


def distill_ramp(step: Step, warmup: float) -> float:
    """Factor of w_sd and w_at: linear from 0 at the first step to 1 after `warmup` epochs, so the
    backbone distils from the FE module only once `aux` has trained it; 1 when warmup = 0."""
    return 1.0 if warmup <= 0 else min(1.0, step.epoch_float / warmup)


@dataclass
class M2SDOutput:
    logits: Tensor                   # (B, num_classes) of W on every input row
    feat: Tensor                     # (B, D) pooled backbone features
    stages: list[Tensor] | None      # φ_i of the first `fe_rows` rows
    enhanced: list[Tensor] | None    # T_i of the same rows
    fe_logits: Tensor | None         # W′ logits of the same rows


class M2SDNet(nn.Module):
    """Backbone with `forward_stages` + linear classifier W + optional FE module (train-only)."""

    def __init__(self, backbone: nn.Module, num_classes: int, fe: FeatureEnhancer | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.fe = fe

    def forward(self, x: Tensor, fe_rows: int = 0) -> M2SDOutput:
        """(B, C, H, W) -> M2SDOutput; FE runs on the first `fe_rows` rows (0: not at all)."""
        stages = self.backbone.forward_stages(x)
        feat = stages[-1].mean(dim=(2, 3))
        if not fe_rows or self.fe is None:
            return M2SDOutput(self.head(feat), feat, None, None, None)
        mine = [s[:fe_rows] for s in stages]
        enhanced, fe_logits = self.fe(mine)
        return M2SDOutput(self.head(feat), feat, mine, enhanced, fe_logits)


def build_student(cfg: ExperimentConfig, num_classes: int) -> M2SDNet:
    m = cfg.method_cfg
    backbone = build_backbone(cfg.model.arch, pretrained=cfg.model.pretrained,
                              image_size=cfg.data.image_size)
    if not hasattr(backbone, "forward_stages"):
        raise ConfigError(f"model.arch={cfg.model.arch!r}: M2SD needs per-stage feature maps; use "
                          "a backbone with forward_stages (resnet20, resnet18, ...)")
    fe = None
    if m.enhance:
        fe = FeatureEnhancer(backbone.stage_channels, num_classes, layout=m.en_layout,
                             heads=m.mhsa_heads, max_side=m.mhsa_max_side,
                             reduction=m.ca_reduction, channels=m.fe_channels)
    return M2SDNet(backbone, num_classes, fe)


@register_method("m2sd")
class M2SD(Method):
    """Stage-2 M2SD training (see module docstring)."""

    Config = M2SDConfig

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.student = build_student(cfg, num_classes)

    def _draw(self, labels: Tensor, height: int, width: int, step: Step):
        """(partner (B,), λ, CutMix box) from a generator seeded by (seed, rank, step)."""
        seed = (self.cfg.seed * 1_000_003 + dist.rank() * 7919 + step.it) ^ _MIX_SALT
        rng = np.random.RandomState(seed % 2**32)
        scores = torch.rand(len(labels), len(labels), generator=torch.Generator().manual_seed(seed))
        partner = mixing.different_class_partner(labels, scores.to(labels.device))
        box, lam = mixing.inside_cutmix_box(rng, height, width, float(rng.beta(self.mcfg.alpha,
                                                                               self.mcfg.alpha)))
        return partner, lam, box

    def forward(self, batch: Batch, step: Step) -> LossDict:
        m, x, y = self.mcfg, batch.views[0], batch.labels
        inputs = [x]
        if m.branches:
            partner, lam, box = self._draw(y, x.shape[-2], x.shape[-1], step)
            if m.mixup:
                inputs.append(mixing.pair_mixup(x, partner, lam))
            if m.cutmix:
                inputs.append(mixing.pair_cutmix(x, partner, box))
        out = self.student(torch.cat(inputs), fe_rows=len(x) if m.enhance else 0)
        logits = out.logits.float().split(len(x))
        terms: dict[str, Tensor] = {}
        if m.w_ce > 0:
            terms["ce"] = F.cross_entropy(logits[0], y)
        if m.branches:
            target = mixing.pair_targets(y, partner, lam, self.num_classes)
            terms["mix"] = sum(mixing.soft_target_ce(z, target) for z in logits[1:])
            if len(logits) == 3 and m.w_kl > 0:
                terms["kl"] = symmetric_kl(logits[1], logits[2], m.kl_temp)
        health = {}
        if m.enhance:
            terms.update(self._sd_terms(out, logits[0], y))
            health = teacher_health(F.softmax(out.fe_logits.float() / m.kl_temp, dim=-1))
        weights = term_weights(m, terms)
        if m.enhance:
            ramp = distill_ramp(step, m.distill_warmup)
            weights.update({k: w * ramp for k, w in weights.items() if k in ("sd", "at")})
            health["distill_ramp"] = torch.tensor(ramp)
        return {"loss": weighted_sum(terms, weights),
                **{k: v.detach() for k, v in terms.items()}, **health}

    def _sd_terms(self, out: M2SDOutput, clean_logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        """`sd`, `at` and `aux` on the clean rows (stage 2-2)."""
        m = self.mcfg
        fe_logits, enhanced = out.fe_logits.float(), out.enhanced
        if m.detach_teacher:
            fe_logits_t, enhanced_t = fe_logits.detach(), [t.detach() for t in enhanced]
        else:
            fe_logits_t, enhanced_t = fe_logits, enhanced
        terms = {"sd": soft_label_kl(fe_logits_t, clean_logits, m.kl_temp),  # KL(p̂ ‖ f(x))
                 "at": at_loss(enhanced_t, out.stages)}
        if m.w_aux > 0:
            terms["aux"] = F.cross_entropy(fe_logits, y)
        return terms

    def init_from_checkpoint(self, path: str) -> None:
        """Start from a stage-1 checkpoint (e.g. `ce`): backbone and W; FE keeps its init."""
        from kdray.checkpoint import load_checkpoint

        load_strict(unwrap(self.student), load_checkpoint(path)["model"]["student"],
                    source=f"train.init_from={path!r}", what="M2SD's student (backbone + head)",
                    keep_own=lambda k: k.startswith("fe."))
