from __future__ import annotations

import json

import pytest

from kdray.config import ConfigError, ExperimentConfig, parse_overrides
from kdray.search import Choice, Float, Int


def test_defaults_roundtrip_and_flatten(tmp_path):
    cfg = ExperimentConfig()
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    flat = cfg.flatten()
    assert flat["optim.lr"] == cfg.optim.lr and flat["eval.shots"] == [1, 5]
    path = tmp_path / "c.json"
    cfg.to_json(str(path))
    assert ExperimentConfig.from_dict(json.loads(path.read_text())) == cfg


def test_overrides_parse_by_field_type():
    cfg = ExperimentConfig().override(parse_overrides(
        ["optim.lr=0.01", "eval.shots=1,5,10", "data.download=true", "train.epochs=3",
         "data.mask_ratio=[0.1, 0.3]", "method=kd", "method_cfg.tau=2"]))
    assert cfg.optim.lr == 0.01 and cfg.eval.shots == (1, 5, 10) and cfg.data.download is True
    assert cfg.train.epochs == 3 and cfg.data.mask_ratio == (0.1, 0.3)
    assert cfg.method == "kd" and cfg.method_cfg.tau == 2.0


@pytest.mark.parametrize("key,value,needle", [
    ("optim.lrr", "1", "valid keys there"),
    ("nope.lr", "1", "'nope' is not a field"),
    ("train.epochs", "two", "expected an integer"),
    ("train.epochs", "0", "out of range"),
    ("optim.name", "adam", "choose one of ['adamw', 'sgd']"),
    ("method", "dino", "choose one of"),
    ("data.mask_prob", "1.5", "out of range"),
    ("data.augment", "fancy", "multicrop"),
    ("method_cfg.label_smoothing", "-0.1", "method_cfg.label_smoothing"),
    ("data.download", "maybe", "true/false"),
])
def test_bad_values_name_the_key(key, value, needle):
    with pytest.raises(ConfigError) as e:
        ExperimentConfig().override({key: value})
    assert needle in str(e.value)
    assert key.split(".")[0] in str(e.value) or "nope" in str(e.value)


def test_unknown_key_in_dict_and_method_cfg_type():
    raw = ExperimentConfig().to_dict()
    raw["optim"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        ExperimentConfig.from_dict(raw)
    with pytest.raises(ConfigError, match="method_cfg"):
        ExperimentConfig(method="ce").override({"method_cfg.tau": 3})


def test_search_domains_validate():
    with pytest.raises(ValueError):
        Float(1.0, 0.5)
    with pytest.raises(ValueError):
        Float(0.0, 1.0, log=True)
    assert Int(1, 3).contains(3) and not Int(1, 3).contains(4)
    assert Choice(["a", "b"]).contains("b")


def test_phase_derived_weights_are_numbers_and_follow_the_phase():
    """SMKD's w_patch / w_mim default by phase; the config (and so config.json and the MLflow
    params) always holds the numbers, and a new phase re-derives them unless set alongside."""
    c = ExperimentConfig(method="smkd")
    assert (c.method_cfg.w_patch, c.method_cfg.w_mim) == (0.0, 1.0)           # ssl (iBOT)
    sup = c.override({"method_cfg.phase": "supervised"})
    assert (sup.method_cfg.w_patch, sup.method_cfg.w_mim) == (1.0, 0.0)
    back = sup.override({"method_cfg.phase": "ssl"})                          # not stuck at 1/0
    assert (back.method_cfg.w_patch, back.method_cfg.w_mim) == (0.0, 1.0)
    both = sup.override({"method_cfg.phase": "ssl", "method_cfg.w_patch": 0.5})
    assert (both.method_cfg.w_patch, both.method_cfg.w_mim) == (0.5, 1.0)
    kept = sup.override({"method_cfg.w_mim": 0.3})                            # phase untouched
    assert (kept.method_cfg.w_patch, kept.method_cfg.w_mim) == (1.0, 0.3)
    flat = sup.flatten()
    assert flat["method_cfg.w_patch"] == 1.0 and None not in (
        flat["method_cfg.w_patch"], flat["method_cfg.w_mim"])
    assert ExperimentConfig.from_dict(sup.to_dict()) == sup
