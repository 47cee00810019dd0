"""Ray-free study layer: what a study runs (`spec`) and how its results read (`table`,
`artifacts`). The runtime (`kdray.runtime`) runs a `Study` with Ray Tune and MLflow."""

from kdray.study.spec import Row, Study

__all__ = ["Row", "Study"]
