"""The smallest configuration of this method, for the registry-wide contract tests
(tests/test_methods.py): `tiny_config(name, tmp, num_classes, make_config)` returns config
overrides, writing any teacher checkpoint it needs under `tmp`; `make_config(overrides)` builds
an ExperimentConfig (handed in, so the method package imports no config)."""

from __future__ import annotations


def tiny_config(name, tmp, num_classes, make_config) -> dict:
    return {"model.arch": "conv2", "data.image_size": 16, "data.patch_size": 4}
