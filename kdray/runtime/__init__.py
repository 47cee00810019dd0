"""The Ray / Optuna / MLflow edge. The only package that imports ray, optuna or mlflow."""
