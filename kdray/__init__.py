"""kdray: knowledge-distillation research on Ray Train/Tune, Optuna and MLflow."""

__version__ = "0.1.0"
