"""Detection pieces (MKD): COCO data, box evaluation, detectors. Plain PyTorch + pycocotools."""

import kdray.data  # noqa: F401 - first: kdray.data's registry imports kdray.detection.data
from kdray.detection.coco_eval import (
    METRICS,
    CocoBoxEvaluator,
    coco_box_metrics,
    evaluate_detections,
    gather_detections,
    to_coco_results,
)

__all__ = ["METRICS", "CocoBoxEvaluator", "coco_box_metrics", "evaluate_detections",
           "gather_detections", "to_coco_results"]
