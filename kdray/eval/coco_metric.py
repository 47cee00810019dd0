"""COCO box evaluation (AP, AP50, AP75, AP_S/M/L) with pycocotools, DDP-safe.

Detections are per image: ``{"image_id": int, "boxes": (N, 4) xyxy pixels, "scores": (N,),
"labels": (N,)}`` (tensors, arrays or lists). Labels are COCO category ids, or contiguous indices
mapped through `label_to_cat`. Each rank evaluates a shard; `gather_detections` collects the
shards on every rank (``kdray.dist.all_gather_object``, identity in one process) and drops the
duplicates a padding DistributedSampler adds, so the result equals single-process evaluation.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from kdray.dist import all_gather_object

#: names of COCOeval.stats[0:6] for iouType="bbox".
METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


def _array(x, shape: tuple[int, ...] = (-1,)) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(shape)


def to_numpy(det: dict) -> dict:
    """One image's detections with numpy arrays (cheap to pickle across ranks)."""
    boxes = _array(det["boxes"], (-1, 4))
    scores, labels = _array(det["scores"]), _array(det["labels"]).astype(np.int64)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"image {det['image_id']}: {len(boxes)} boxes, {len(scores)} scores, "
                         f"{len(labels)} labels")
    return {"image_id": int(det["image_id"]), "boxes": boxes, "scores": scores, "labels": labels}


def to_coco_results(detections: Iterable[dict],
                    label_to_cat: Sequence[int] | None = None) -> list[dict]:
    """Per-image detections -> COCO result records (bbox as [x, y, w, h]).

    Args:
        detections: per-image dicts (see module docstring), boxes in xyxy.
        label_to_cat: category id of each contiguous label; None if labels are category ids.

    Returns:
        list of ``{"image_id", "category_id", "bbox", "score"}``.
    """
    out = []
    for det in detections:
        d = to_numpy(det)
        xywh = d["boxes"].copy()
        xywh[:, 2:] -= xywh[:, :2]
        for box, score, label in zip(xywh, d["scores"], d["labels"]):
            cat = int(label) if label_to_cat is None else int(label_to_cat[int(label)])
            out.append({"image_id": d["image_id"], "category_id": cat,
                        "bbox": [float(v) for v in box], "score": float(score)})
    return out


def gather_detections(local: Iterable[dict]) -> list[dict]:
    """Every rank's per-image detections, on every rank, one entry per image id (first kept).

    A DistributedSampler pads the last shard with repeated images; those repeats are dropped so
    each image counts once. Returns the detections sorted by image id.
    """
    shards = all_gather_object([to_numpy(d) for d in local])
    seen: dict[int, dict] = {}
    for shard in shards:
        for det in shard:
            seen.setdefault(det["image_id"], det)
    return [seen[k] for k in sorted(seen)]


def _coco_gt(gt: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(gt)  # loadRes and createIndex mutate/alias the dict
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_box_metrics(results: list[dict], gt: dict,
                     image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO box AP metrics of result records against a COCO-format ground truth.

    Args:
        results: records from `to_coco_results`.
        gt: COCO instances dict (``images``, ``annotations`` with ``bbox`` xywh, ``area``,
            ``iscrowd``, ``id``; ``categories``).
        image_ids: images to evaluate (default: every image in `gt`, so an image without
            detections counts as all-missed).

    Returns:
        {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"} in [0, 1]; -1 where COCO has no ground
        truth to define the number (e.g. no small objects). All 0 without any detection.
    """
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(METRICS, 0.0)
    coco_gt = _coco_gt(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(METRICS, ev.stats[:6])}


def evaluate_detections(detections: Iterable[dict], gt: dict, *,
                        label_to_cat: Sequence[int] | None = None,
                        image_ids: Sequence[int] | None = None,
                        gather: bool = True) -> dict[str, float]:
    """Gather per-image detections across ranks (if `gather`) and compute COCO box AP.

    Every rank returns the same numbers. See `to_coco_results` and `coco_box_metrics`.
    """
    dets = gather_detections(detections) if gather else [to_numpy(d) for d in detections]
    return coco_box_metrics(to_coco_results(dets, label_to_cat), gt, image_ids)


class CocoBoxEvaluator:
    """Accumulates a shard of detections batch by batch; `compute` gathers and scores them.

    Args:
        gt: COCO instances dict of the evaluation split.
        label_to_cat: category id of each contiguous label (None: labels are category ids).
    """

    def __init__(self, gt: dict, label_to_cat: Sequence[int] | None = None) -> None:
        self.gt, self.label_to_cat = gt, label_to_cat
        self.detections: list[dict] = []

    def update(self, image_ids: Sequence[int], outputs: Sequence[dict]) -> None:
        """Add one batch: `outputs[k]` holds "boxes" (N, 4) xyxy, "scores", "labels" of image k."""
        for image_id, out in zip(image_ids, outputs, strict=True):
            self.detections.append(to_numpy({**out, "image_id": int(image_id)}))

    def compute(self) -> dict[str, float]:
        """COCO box metrics over all ranks' detections (same on every rank)."""
        return evaluate_detections(self.detections, self.gt, label_to_cat=self.label_to_cat)
