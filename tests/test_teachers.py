"""The shared teacher module (kdray.modules.teachers): one reader for kdray checkpoints, plain
and prefixed state_dicts, one strict fit report, frozen eval-mode teachers; and the registry
card check the engine's preflight runs for every method with a teacher (here KD)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdray.checks import ConfigError
from kdray.config import ExperimentConfig
from kdray.engine.preflight import method_preflight
from kdray.modules.teachers import (
    build_classifier,
    build_teacher,
    load_model_state,
    load_strict,
    strip_prefix,
    torchvision_to_classifier,
    write_card,
)

N = 64  # training classes of the default synthetic_fs data


def _cfg(ckpt: str = "", **over) -> ExperimentConfig:
    return ExperimentConfig().override({"method": "kd", "model.arch": "conv2",
                                        "model.teacher_ckpt": ckpt, **over})


def _weights(n: int = N) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_classifier(_cfg(), n).state_dict()


@pytest.mark.parametrize("layout", ["kdray", "plain", "state_dict", "ddp"])
def test_every_file_layout_gives_the_same_frozen_eval_teacher(tmp_path, layout):
    w = _weights()
    raw = {"kdray": {"model": {"student": w}, "optimizer": {}}, "plain": w,
           "state_dict": {"state_dict": w}, "ddp": {f"module.{k}": v for k, v in w.items()}}
    path = str(tmp_path / "t.pt")
    torch.save(raw[layout], path)
    assert load_model_state(path).keys() == w.keys()
    teacher = build_teacher(_cfg(path), N)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in w.items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_prefix_stripping_and_torchvision_keys(tmp_path):
    w = {"detector.a": torch.ones(1), "decoder.b": torch.zeros(1)}
    assert strip_prefix(w, "detector.") == {"a": w["detector.a"]}
    assert strip_prefix(w, "backbone.") is w                         # no key has it: unchanged
    path = str(tmp_path / "mkd.pt")
    torch.save({"model": {"student": w}}, path)
    assert load_model_state(path, prefix="detector.") == {"a": w["detector.a"]}
    tv = {"conv1.weight": torch.ones(1), "fc.weight": torch.ones(2), "fc.bias": torch.ones(2)}
    assert sorted(torchvision_to_classifier(tv)) == ["backbone.conv1.weight", "head.bias",
                                                     "head.weight"]


def test_mismatch_report_names_the_key_the_problem_and_shapes(tmp_path):
    path = str(tmp_path / "t.pt")
    torch.save({"model": {"student": _weights(10)}}, path)           # 10-class head, data has 64
    with pytest.raises(ConfigError, match=r"model.teacher_ckpt '.*t.pt' does not fit teacher arch "
                       r"'conv2' with 64 classes: missing \[\], unexpected \[\], shape mismatch "
                       r"\[\('head.weight', \(10, \d+\), \(64, \d+\)\), \('head.bias', \(10,\), "
                       r"\(64,\)\)\]"):
        build_teacher(_cfg(path), N)
    with pytest.raises(ConfigError, match="no file at"):
        build_teacher(_cfg(str(tmp_path / "absent.pt")), N)
    net = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"X does not fit Y: missing \['bias'\], unexpected "
                       r"\['extra'\]"):
        load_strict(net, {"weight": torch.ones(2, 2), "extra": torch.ones(1)}, source="X",
                    what="Y")
    # a key the module keeps (keep_own) or that is optional on either side is not a mismatch
    load_strict(net, {"weight": torch.ones(2, 2)}, source="X", what="Y",
                keep_own=lambda k: k == "bias")
    assert torch.equal(net.weight, torch.ones(2, 2))


def test_kd_preflight_checks_the_teacher_card_before_ray(tmp_path):
    path = str(tmp_path / "t.pt")
    torch.save({"model": {"student": _weights()}}, path)
    cfg = _cfg(path)
    method_preflight(cfg)                                            # no card: only the fit check
    write_card(path, arch="conv2", dataset="cifar10", num_classes=N, top1=50.0)
    with pytest.raises(ConfigError, match="card dataset 'cifar10', configured 'synthetic_fs'"):
        method_preflight(cfg)
    write_card(path, arch="conv2", dataset="synthetic_fs", num_classes=N, top1=50.0)
    method_preflight(cfg)
    with pytest.raises(ConfigError, match="card architecture 'conv2', configured 'conv4'"):
        method_preflight(cfg.override({"model.teacher_arch": "conv4"}))
    with open(path, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ConfigError, match="checksum"):
        method_preflight(cfg)
