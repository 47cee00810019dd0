"""kdray: knowledge-distillation research on Ray Train/Tune, Optuna and MLflow."""

__version__ = "0.1.0"

# The package facade sits on top of every layer: importing it registers the built-in methods
# in kdray.registry, which is how kdray.config resolves a method name without importing upward.
from kdray import methods as _methods  # noqa: E402, F401
