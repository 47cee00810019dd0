"""eval.kind = "coco": COCO box AP of ``method.detect`` on the evaluation split, DDP-sharded.

Each rank runs ``method.detect(images, sizes)`` on its strided shard of the (resized) eval split,
maps the boxes back to original image pixels (divides by the resize scale) and the labels to COCO
category ids, and `CocoBoxEvaluator` gathers every rank's detections and scores them with
pycocotools. Metrics: ``<split>/AP``, ``<split>/AP50``, ``<split>/AP75``, ``<split>/AP_S``,
``<split>/AP_M``, ``<split>/AP_L`` (``<split>`` = eval.split) in [0, 1] (-1 where COCO has no ground truth of that size). ``eval.max_items`` > 0
evaluates that many evenly spaced images (smoke runs) against their ground truth only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Subset

from kdray import dist
from kdray.data.coco import CocoDetection, collate
from kdray.eval.coco_metric import METRICS, CocoBoxEvaluator
from kdray.eval.fewshot import EvalResult

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig
    from kdray.methods.base import Method


class CocoEvaluator:
    """Called as ``evaluator(method, device) -> EvalResult`` on every rank (same result on all).

    Args:
        cfg: experiment config (eval.batch_size, eval.max_items, data.loader_workers).
        dataset: the eval split, a `CocoDetection`.
    """

    def __init__(self, cfg: ExperimentConfig, dataset: CocoDetection) -> None:
        if not isinstance(dataset, CocoDetection):
            raise TypeError(f"eval.kind=coco needs a detection dataset, got {type(dataset)}")
        self.cfg, self.dataset = cfg, dataset
        n, k = len(dataset), cfg.eval.max_items
        self.indices = [i * n // k for i in range(k)] if 0 < k < n else list(range(n))
        self.gt = dataset.gt_subset(self.indices)

    def _loader(self) -> DataLoader:
        shard = self.indices[dist.rank()::dist.world_size()]
        return DataLoader(Subset(self.dataset, shard), batch_size=self.cfg.eval.batch_size,
                          shuffle=False, collate_fn=collate,
                          num_workers=self.cfg.data.loader_workers)

    @torch.no_grad()
    def _run(self, method: Method, device: torch.device | str, acc: CocoBoxEvaluator) -> None:
        for batch in self._loader():
            x = batch.views[0].to(device, non_blocking=True)
            outs = method.detect(x, batch.extra["sizes"])
            for out, scale in zip(outs, batch.extra["scales"], strict=True):
                out["boxes"] = out["boxes"].float() / scale
            acc.update(batch.extra["image_ids"], outs)

    def __call__(self, method: Method, device: torch.device | str) -> EvalResult:
        """Evaluate ``method.detect``; the method is left in the mode it came in."""
        acc = CocoBoxEvaluator(self.gt, label_to_cat=self.dataset.label_to_cat)
        was_training = method.training
        method.eval()
        try:
            self._run(method, device, acc)
        finally:
            method.train(was_training)
        res = acc.compute()
        return EvalResult(metrics={self.cfg.eval.key(k): float(res[k]) for k in METRICS}, records={})
