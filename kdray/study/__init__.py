"""Ray-free study layer: what a study runs (`spec`) and how its results read (`table`,
`artifacts`). The runtime (`kdray.runtime`) runs a `Study` with Ray Tune and MLflow."""

from kdray.study.describe import split_note
from kdray.study.spec import BEST_LABEL, Row, Study

__all__ = ["BEST_LABEL", "Row", "Study", "split_note"]
