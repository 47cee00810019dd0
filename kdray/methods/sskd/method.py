"""SSKD: "Knowledge Distillation Meets Self-Supervision" (Xu, Liu, Li & Loy, ECCV 2020,
arXiv:2006.07114; official code xuguodong03/SSKD).

The teacher's self-supervision signal is distilled besides its class probabilities: every image is
seen normally and under K transformations; a 2-layer MLP (SS module) on the pooled features gives
a (K*B, B) cosine-similarity matrix of transformed vs normal samples, whose row-softmax the student
mimics, and the student also mimics the teacher's class probabilities on the transformed images.
Teacher and student SS modules are trained first on the frozen teacher (stage T2,
`kdray.methods.sskd.teacher`), the teacher classifier before that (stage T1, method `ce`).

Loss (docs/methods/sskd.md §3.3; paper Eq. 5-8): L = w_ce CE(s(x), y) + w_kd tau_kd^2 KL(t(x) || s(x))
+ w_ss tau_ss^2 KL(B_t || B_s) + w_tf tau_tf^2 KL(t(x~) || s(x~)); w_ce..w_tf are the paper's
lambda1..lambda4. CE and KD use the normal view only; L_T and L_ss are averaged over the rows kept
by selective transfer: rows the teacher gets right (rank 0: true class for L_T, own source image
for L_ss) plus floor(ratio * #wrong) wrong rows of smallest rank (ratio_tf / ratio_ss).

Defaults are the official code's (weights 0.1 / 0.9 / 10 / 2.7, tau 4 / 4 / 0.5, ratios 0.75 /
1.0), which the paper's tables used. Where paper and code differ: `transforms="rotation"` (default)
is the code's set (90/180/270 degree copies), "paper" the paper's four families (colour dropping,
rotation, crop + resize, colour distortion); the paper writes the terms as cross-entropies, the
code (and we) as KL (same gradient). Deviations from the code: transformed copies are made on the
device from the normal view, so they share its random crop (the code crops each copy
independently); rank ties are broken by row order (the code's argsort is arbitrary); the teacher
is not stored in student checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdray.checks import ConfigError, check_choice, check_range
from kdray.dist import unwrap
from kdray.methods.base import Method
from kdray.methods.sskd import losses as L
from kdray.modules.backbones import Classifier, build_backbone
from kdray.modules.losses import kl_div, term_weights, weighted_sum
from kdray.modules.teachers import (
    build_classifier,
    freeze,
    load_strict,
    model_state,
    read_file,
    torchvision_to_classifier,
)
from kdray.registry import register_method
from kdray.search import Choice, Float
from kdray.types import Batch, DataInfo, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig


@dataclass(frozen=True)
class SSKDConfig:
    w_ce: float = 0.1            # lambda1, student.py --ce-weight
    w_kd: float = 0.9            # lambda2, --kd-weight
    w_ss: float = 10.0           # lambda3, --ss-weight
    w_tf: float = 2.7            # lambda4, --tf-weight
    tau_kd: float = 4.0          # --kd-T
    tau_tf: float = 4.0          # --tf-T
    tau_ss: float = 0.5          # --ss-T
    ratio_ss: float = 0.75       # --ratio-ss: share of wrong SS rows kept
    ratio_tf: float = 1.0        # --ratio-tf: share of wrong transformed rows kept
    transforms: str = "rotation"  # rotation (official code) | paper (four families)
    teacher_min_acc: float = 0.0  # % top-1 the teacher must reach (card and measured); 0 = off
    teacher_eval_items: int = 1000  # evenly spaced eval images for the preflight measurement
    require_card: bool = False   # refuse teachers without a registry card

    # docs/searching.md §6; transforms is not searched: the teacher's SS head must match it (T2 stage)
    SEARCH: ClassVar[dict] = {
        "w_ss": Float(1.0, 20.0), "w_tf": Float(0.5, 5.0), "w_kd": Float(0.1, 2.0),
        "tau_ss": Float(0.1, 1.0), "tau_kd": Float(1.0, 8.0), "tau_tf": Float(1.0, 8.0),
        "ratio_ss": Choice([0.0, 0.25, 0.5, 0.75, 1.0]),
        "ratio_tf": Choice([0.0, 0.25, 0.5, 0.75, 1.0]),
    }

    def __post_init__(self) -> None:
        for k in ("w_ce", "w_kd", "w_ss", "w_tf"):
            check_range(f"method_cfg.{k}", getattr(self, k), 0.0, 100.0)
        for k in ("tau_kd", "tau_tf", "tau_ss"):
            check_range(f"method_cfg.{k}", getattr(self, k), 0.0, 100.0, low_open=True)
        check_range("method_cfg.ratio_ss", self.ratio_ss, 0.0, 1.0)
        check_range("method_cfg.ratio_tf", self.ratio_tf, 0.0, 1.0)
        check_choice("method_cfg.transforms", self.transforms, L.TRANSFORMS)
        check_range("method_cfg.teacher_min_acc", self.teacher_min_acc, 0.0, 100.0)
        check_range("method_cfg.teacher_eval_items", self.teacher_eval_items, 0)

    @property
    def uses_teacher(self) -> bool:
        return self.w_kd > 0 or self.w_ss > 0 or self.w_tf > 0

    @property
    def uses_views(self) -> bool:
        return self.w_ss > 0 or self.w_tf > 0


def ss_head(dim: int) -> nn.Sequential:
    """The SS module: Linear(d, d) -> ReLU -> Linear(d, d) on pooled features (wrapper.py)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


@dataclass
class SSKDOutput:
    logits: Tensor       # (N, num_classes)
    feat: Tensor         # (N, D) pooled features
    proj: Tensor | None  # (N, D) SS-module outputs (None without an SS module)


class SSKDNet(nn.Module):
    """Classifier plus optional SS module; one forward returns logits, features and projections."""

    def __init__(self, classifier: Classifier, head: nn.Module | None) -> None:
        super().__init__()
        self.classifier = classifier
        self.ss_head = head

    def forward(self, x: Tensor) -> SSKDOutput:
        out = self.classifier(x)
        proj = self.ss_head(out.feat) if self.ss_head is not None else None
        return SSKDOutput(out.logits, out.feat, proj)


def teacher_states(path: str) -> tuple[dict, dict | None]:
    """(classifier state, SS-head state or None) from a T2 (`sskd_teacher`) checkpoint, or a T1
    (`ce`) checkpoint / plain classifier state_dict / torchvision-style ResNet state_dict (`fc.*`
    becomes the head; e.g. ImageNet resnet34 weights for the timm `resnet34` backbone)."""
    raw = read_file(path)  # ConfigError for a missing file
    model = raw.get("model", raw) if isinstance(raw, dict) else {}
    if isinstance(model, dict) and "ss_head" in model and "teacher" in model:
        return model["teacher"], model["ss_head"]
    return torchvision_to_classifier(model_state(raw)), None


def build_sskd_teacher(cfg: ExperimentConfig, num_classes: int, *, with_head: bool) -> SSKDNet:
    """The frozen teacher (classifier + SS module when `with_head`) from model.teacher_ckpt."""
    arch, ckpt = cfg.model.teacher_arch or cfg.model.arch, cfg.model.teacher_ckpt
    if not ckpt:
        raise ConfigError("model.teacher_ckpt: SSKD needs a trained teacher (stage T1 with "
                          "method ce, then stage T2 with method sskd_teacher)")
    cls_state, head_state = teacher_states(ckpt)
    classifier = Classifier(build_backbone(arch, image_size=cfg.data.image_size), num_classes)
    source = f"model.teacher_ckpt {ckpt!r}"
    load_strict(classifier, cls_state, source=source,
                what=f"teacher arch {arch!r} with {num_classes} classes")
    head = None
    if with_head:
        if head_state is None:
            raise ConfigError(f"model.teacher_ckpt {ckpt!r} has no SS module; "
                              "train it first (method sskd_teacher on this checkpoint) or set "
                              "method_cfg.w_ss=0")
        head = load_strict(ss_head(classifier.backbone.num_features), head_state, source=source,
                           what=f"the SS module of {arch!r}")
    return freeze(SSKDNet(classifier, head))


def check_teacher(cfg: ExperimentConfig, data: DataInfo, *, with_head: bool, min_acc: float = 0.0,
                  eval_items: int = 0) -> float:
    """Driver-side teacher check of SSKD: the checkpoint fits the architecture (and has an SS
    module when needed) and its measured top-1 reaches `min_acc` (its registry card is checked
    before, by the engine's preflight, with `SSKD.teacher_card_checks`).

    Returns:
        The measured top-1 (%), or NaN when `min_acc` is 0 (no measurement).
    Raises:
        ConfigError naming the problem.
    """
    teacher = build_sskd_teacher(cfg, data.num_classes, with_head=with_head)
    if min_acc <= 0:
        return float("nan")
    arch, ckpt = cfg.model.teacher_arch or cfg.model.arch, cfg.model.teacher_ckpt
    acc = data.top1(lambda x: teacher(x).logits, eval_items)
    if acc < min_acc:
        raise ConfigError(f"model.teacher_ckpt {ckpt!r}: teacher {arch!r} measures {acc:.2f}% "
                          f"top-1 on {cfg.eval.split} ({eval_items or 'all'} images), below "
                          f"method_cfg.teacher_min_acc={min_acc:.2f}%")
    return acc


@register_method("sskd")
class SSKD(Method):
    """Self-supervision KD from a frozen teacher with a trained SS module (module docstring)."""

    Config = SSKDConfig

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        classifier = build_classifier(cfg, num_classes)
        head = ss_head(classifier.backbone.num_features) if self.mcfg.w_ss > 0 else None
        self.student = SSKDNet(classifier, head)
        if self.mcfg.uses_teacher:
            self.teacher = build_sskd_teacher(cfg, num_classes, with_head=self.mcfg.w_ss > 0)

    @classmethod
    def preflight(cls, cfg: ExperimentConfig, data: DataInfo) -> None:
        m = cfg.method_cfg
        try:
            build_backbone(cfg.model.arch, image_size=cfg.data.image_size)
        except ValueError as e:
            raise ConfigError(f"model.arch: {e}") from None
        if m.uses_teacher or cfg.model.teacher_ckpt:  # rows of a study share one teacher check
            check_teacher(cfg, data, with_head=m.w_ss > 0, min_acc=m.teacher_min_acc,
                          eval_items=m.teacher_eval_items)

    @classmethod
    def teacher_card_checks(cls, cfg: ExperimentConfig) -> dict:
        """The card must record the expected accuracy and, with L_ss, the run's transforms."""
        m = cfg.method_cfg
        return {"min_top1": m.teacher_min_acc, "require": m.require_card,
                "ss_transforms": m.transforms if m.w_ss > 0 else ""}

    def forward(self, batch: Batch, step: Step) -> LossDict:
        m, x, y = self.mcfg, batch.views[0], batch.labels
        b = x.shape[0]
        if m.uses_views:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step.it)
            x = torch.cat([x, L.transformed_views(x, m.transforms, g)])
        s = self.student(x)
        terms, out = {"ce": F.cross_entropy(s.logits[:b], y)}, {}
        if self.teacher is not None:
            with torch.no_grad():
                t = self.teacher(x)
            if m.w_kd > 0:
                terms["kd"] = kl_div(s.logits[:b], t.logits[:b].float(), m.tau_kd)
            if m.w_tf > 0:
                terms["tf"] = self._tf(s.logits[b:], t.logits[b:], y.repeat(len(x) // b - 1), out)
            if m.w_ss > 0:
                terms["ss"] = self._ss(s.proj, t.proj, b, out)
        return {**{k: v.detach() for k, v in terms.items()}, **out,
                "loss": weighted_sum(terms, term_weights(m, terms))}

    def _tf(self, s_logits: Tensor, t_logits: Tensor, target: Tensor, out: LossDict) -> Tensor:
        """L_T over the transformed rows kept by the teacher's true-class rank."""
        keep = L.select_rows(L.target_rank(t_logits.float(), target), self.mcfg.ratio_tf)
        out["tf_kept"] = keep.float().mean()
        return kl_div(s_logits.float(), t_logits.float(), self.mcfg.tau_tf, reduction="masked",
                      mask=keep, dim=1)

    def _ss(self, s_proj: Tensor, t_proj: Tensor, b: int, out: LossDict) -> Tensor:
        """L_ss over the similarity rows kept by the rank of each row's own source image."""
        s_sim, t_sim = L.similarity(s_proj[b:], s_proj[:b]), L.similarity(t_proj[b:], t_proj[:b])
        rank = L.target_rank(t_sim, L.source_index(len(t_sim), b, t_sim.device))
        keep = L.select_rows(rank, self.mcfg.ratio_ss)
        out["ss_kept"], out["t_ss_acc"] = keep.float().mean(), (rank == 0).float().mean()
        return kl_div(s_sim.float(), t_sim.float(), self.mcfg.tau_ss, reduction="masked",
                      mask=keep, dim=1)

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> Tensor | None:
        return self.teacher(x).logits if self.teacher is not None else None

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, dict]:
        """The student only: the frozen teacher is rebuilt from model.teacher_ckpt."""
        return {"student": unwrap(self.student).state_dict()}

    def load_checkpoint_state(self, state: dict[str, dict], strict: bool = True) -> None:
        unwrap(self.student).load_state_dict(state["student"], strict=strict)
