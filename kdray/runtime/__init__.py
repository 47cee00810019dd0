"""The Ray / Optuna / MLflow edge. The only package that imports ray, optuna or mlflow.

In Ray's shape: `worker` (`train_fn_per_worker`, one DDP worker), `driver` (`fit`: a TorchTrainer
run; `run_stage`: a fit that later trials reuse), `tune` (`run_study`: Tuner + Optuna + ASHA over a
`kdray.study.Study`), `tracking` (MLflow runs) over `mlflow_store` (URIs, experiments, lookups),
`session` (Ray start-up, pre-flight), `cli_study` (the studies' command line) and `cluster`
(offline checks of `ray up` YAMLs).
"""
