"""Run by test_runtime.py in its own process: a 2-raylet cluster on this machine and a 2-worker
`fit` spread across both nodes. Prints one JSON line with the outcome."""

import json
import sys

import ray
from local_cluster import local_two_node_cluster

from kdray.config import ExperimentConfig
from kdray.runtime.driver import fit

root, tmp = sys.argv[1], sys.argv[2]
cfg = ExperimentConfig().override({
    "data.root": root, "model.arch": "conv2", "data.batch_size": 32, "train.epochs": 2,
    "train.steps_per_epoch": 3, "eval.shots": "1", "eval.episodes": 20,
    "data.synthetic_classes": 30, "data.synthetic_per_class": 20,
    "resources.num_workers": 2, "resources.placement": "STRICT_SPREAD"})
with local_two_node_cluster(num_cpus=1) as cluster:
    try:
        res = fit(cfg, run_name="two-node", storage_path=f"{tmp}/ray",
                  tracking_uri=f"sqlite:///{tmp}/mlflow.db", address=cluster.address)
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
print(json.dumps({"metrics": res.metrics, "run_id": res.mlflow_run_id, "alive_nodes": nodes}))
