"""Top-1 / top-5 accuracy and cross-entropy on a labelled split, sharded over DDP ranks.

Each rank scores a strided shard (no padding, no dropped tail); the sums of correct counts, summed
losses and item counts are all-reduced, so accuracies equal the single-process numbers exactly and
the loss up to float64 summation order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from kdray import dist
from kdray.eval.fewshot import EvalResult, shard_loader, unpack

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


class Top1Evaluator:
    """Metrics ``<split>/top1``, ``<split>/top5`` (when the method has >= 5 classes),
    ``<split>/loss`` and ``<split>/n_images`` (the images scored: the study table's binomial
    interval of one run); ``<split>`` = cfg.eval.split ("val" or "test")."""

    def __init__(self, cfg: ExperimentConfig, dataset: Dataset) -> None:
        self.cfg = cfg
        n, k = len(dataset), cfg.eval.max_items  # type: ignore[arg-type]
        if 0 < k < n:  # evenly spaced, so class-sorted splits keep every class (smoke runs)
            dataset = Subset(dataset, [i * n // k for i in range(k)])
        self.dataset = dataset

    @torch.no_grad()
    def _local_sums(self, method: Method, device: torch.device | str) -> Tensor:
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        loader = shard_loader(self.dataset, batch_size=self.cfg.eval.batch_size,
                              num_workers=self.cfg.data.loader_workers)
        for batch in loader:
            x, y = unpack(batch)
            sums += _batch_sums(method.logits(x.to(device, non_blocking=True)),
                                y.to(device=device, dtype=torch.int64))
        return sums

    def __call__(self, method: Method, device: torch.device | str) -> EvalResult:
        """Evaluate ``method.logits``; the method is left in the train/eval mode it came in."""
        was_training = method.training
        method.eval()
        try:
            sums = self._local_sums(method, device)
        finally:
            method.train(was_training)
        loss, top1, top5, n = dist.all_reduce_sum(sums).cpu().tolist()
        if n == 0:
            raise ValueError("Top1Evaluator: the evaluation dataset is empty")
        key = self.cfg.eval.key
        metrics = {key("top1"): 100.0 * top1 / n, key("loss"): loss / n, key("n_images"): n}
        if getattr(method, "num_classes", 0) >= 5:
            metrics[key("top5")] = 100.0 * top5 / n
        return EvalResult(metrics=metrics, records={})
