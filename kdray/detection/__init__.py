"""Detection pieces (MKD): COCO box evaluation. Plain PyTorch + pycocotools, no Ray."""

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
