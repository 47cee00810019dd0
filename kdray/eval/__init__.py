"""Evaluators: few-shot episodes (``fewshot``) or top-1 accuracy (``top1``), chosen by eval.kind.

An evaluator is built once per run as ``build_evaluator(cfg, dataset)`` and called as
``evaluator(method, device) -> EvalResult`` on every rank; every rank gets the same result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdray.eval.coco import CocoEvaluator
from kdray.eval.fewshot import EvalResult, FewShotEvaluator
from kdray.eval.fscil import FscilEvaluator
from kdray.eval.top1 import Top1Evaluator

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from kdray.config import ExperimentConfig

__all__ = ["CocoEvaluator", "EvalResult", "FewShotEvaluator", "FscilEvaluator", "Top1Evaluator", "build_evaluator"]


def build_evaluator(cfg: ExperimentConfig,
                    dataset: Dataset) -> FewShotEvaluator | Top1Evaluator | FscilEvaluator | None:
    """The evaluator for ``cfg.eval.kind`` ("fewshot" | "top1" | "fscil"), or None for "none"."""
    kind = cfg.eval.kind
    if kind == "fewshot":
        return FewShotEvaluator(cfg, dataset)
    if kind == "top1":
        return Top1Evaluator(cfg, dataset)
    if kind == "fscil":
        return FscilEvaluator(cfg, dataset)
    if kind == "coco":  # detection (MKD)
        return CocoEvaluator(cfg, dataset)
    if kind == "none":
        return None
    raise ValueError(f"unknown eval.kind {kind!r}; choose fewshot, top1, fscil, coco or none")
