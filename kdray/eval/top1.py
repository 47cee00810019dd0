"""Top-1 / top-5 accuracy and cross-entropy on a labelled split, sharded over DDP ranks.

Each rank scores a strided shard (no padding, no dropped tail); the sums of correct counts, summed
losses and item counts are all-reduced, so accuracies equal the single-process numbers exactly and
the loss up to float64 summation order.

For methods with a frozen classifier teacher (`Method.teacher_logits` not None) it also reports
the teacher-student top-1 agreement at every call and the teacher's own top-1, measured once (on
the first call, the teacher being frozen) next to the top-1 its registry card records. A frozen
teacher's argmax per batch comes from `kdray.eval.teacher_cache`: computed once per teacher and
input batch, then reused by later calls, trials and studies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from kdray import dist
from kdray.eval.fewshot import EvalResult, shard_loader, unpack
from kdray.eval.teacher_cache import TeacherPredictions, teacher_key
from kdray.modules.teachers import read_card

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig
    from kdray.methods.base import Method


def _batch_sums(logits: Tensor, y: Tensor) -> Tensor:
    """(4,) float64: summed CE, top-1 hits, top-5 hits, count for one batch."""
    logits = logits.float()
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
    hits = top == y[:, None]
    return torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                        hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                        torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)])


def _teacher_sums(s_logits: Tensor, t_pred: Tensor, y: Tensor) -> Tensor:
    """(3,) float64: argmax agreements of student and teacher, teacher top-1 hits, count."""
    return torch.stack([(s_logits.argmax(1) == t_pred).sum().double(),
                        (t_pred == y).sum().double(),
                        torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)])


class Top1Evaluator:
    """Metrics ``<split>/top1``, ``<split>/top5`` (when the method has >= 5 classes),
    ``<split>/loss`` and ``<split>/n_images`` (the images scored: the study table's binomial
    interval of one run); ``<split>`` = cfg.eval.split ("val" or "test"). With a classifier
    teacher also ``<split>/agreement`` (% of images where the student's and the teacher's argmax
    agree), ``<split>/teacher_top1`` (measured on the first call, repeated on later ones) and
    ``<split>/teacher_card_top1`` when `model.teacher_ckpt` has a registry card."""

    def __init__(self, cfg: ExperimentConfig, dataset: Dataset) -> None:
        self.cfg = cfg
        n, k = len(dataset), cfg.eval.max_items  # type: ignore[arg-type]
        if 0 < k < n:  # evenly spaced, so class-sorted splits keep every class (smoke runs)
            dataset = Subset(dataset, [i * n // k for i in range(k)])
        self.dataset = dataset
        self._preds: TeacherPredictions | None = None  # the frozen teacher's argmax cache
        self._teacher_top1: float | None = None
        self._card_top1: float | None = None
        self._teacher_of = 0  # id() of the method the three above belong to

    def _frozen_preds(self, method: Method, device: torch.device | str) -> TeacherPredictions | None:
        """The prediction cache of `method`'s frozen teacher; None for a moving teacher or none."""
        if self._teacher_of != id(method):
            self._teacher_of, self._preds, self._teacher_top1 = id(method), None, None
            teacher = getattr(method, "teacher", None)
            if method.teacher_update == "frozen" and isinstance(teacher, torch.nn.Module):
                self._preds = TeacherPredictions(teacher_key(method, teacher, device))
        return self._preds

    @torch.no_grad()
    def _local_sums(self, method: Method, device: torch.device | str) -> Tensor:
        """(7,) float64 on this rank: CE, top-1, top-5, count, then agreements, teacher hits and
        count of the images the teacher scored (0 without a teacher)."""
        sums = torch.zeros(7, dtype=torch.float64, device=device)
        loader = shard_loader(self.dataset, batch_size=self.cfg.eval.batch_size,
                              num_workers=self.cfg.data.loader_workers)
        preds = self._frozen_preds(method, device)
        for batch in loader:
            x, y = unpack(batch)
            key = preds.batch_key(x) if preds is not None else ""
            x, y = x.to(device, non_blocking=True), y.to(device=device, dtype=torch.int64)
            logits = method.logits(x)
            sums[:4] += _batch_sums(logits, y)
            if preds is not None:
                t_pred = preds.argmax(key, len(y), lambda x=x: method.teacher_logits(x))
            else:
                t_pred = t.argmax(1) if (t := method.teacher_logits(x)) is not None else None
            if t_pred is not None:
                sums[4:] += _teacher_sums(logits, t_pred.to(device), y)
        return sums

    def __call__(self, method: Method, device: torch.device | str) -> EvalResult:
        """Evaluate ``method.logits``; the method is left in the train/eval mode it came in."""
        was_training = method.training
        method.eval()
        try:
            sums = self._local_sums(method, device)
        finally:
            method.train(was_training)
        loss, top1, top5, n, agree, t_top1, t_n = dist.all_reduce_sum(sums).cpu().tolist()
        if n == 0:
            raise ValueError("Top1Evaluator: the evaluation dataset is empty")
        key = self.cfg.eval.key
        metrics = {key("top1"): 100.0 * top1 / n, key("loss"): loss / n, key("n_images"): n}
        if getattr(method, "num_classes", 0) >= 5:
            metrics[key("top5")] = 100.0 * top5 / n
        if t_n > 0:
            metrics.update(self._teacher_metrics(100.0 * agree / t_n, 100.0 * t_top1 / t_n,
                                                 frozen=method.teacher_update == "frozen"))
        return EvalResult(metrics=metrics, records={})

    def _teacher_metrics(self, agreement: float, teacher_top1: float, *,
                         frozen: bool) -> dict[str, float]:
        """A frozen teacher's top-1 is the first call's; its card's top-1 when it has a card."""
        key = self.cfg.eval.key
        if self._teacher_top1 is None or not frozen:
            self._teacher_top1 = teacher_top1
            ckpt = self.cfg.model.teacher_ckpt
            card = read_card(ckpt) if ckpt else None
            self._card_top1 = card.top1 if card is not None else None
        out = {key("agreement"): agreement, key("teacher_top1"): self._teacher_top1}
        if self._card_top1 is not None:
            out[key("teacher_card_top1")] = self._card_top1
        return out
