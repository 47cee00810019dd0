"""Episode sampler, few-shot classifiers, summaries and the DDP-equals-single-process evaluators."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import gloo_group
from torch.utils.data import TensorDataset

from kdray.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig
from kdray.data.episodes import Episode, sample_episodes, shard
from kdray.eval import EvalResult, FewShotEvaluator, Top1Evaluator, build_evaluator
from kdray.eval.classifiers import distlinear, fit_logreg, logreg, proto
from kdray.eval.fewshot import evaluate_episodes, extract_features, summarize
from kdray.methods import build_method

SIZES = [10, 12, 9, 15, 10, 11, 8]           # images per class (classes 0..6)
LABELS = np.repeat(np.arange(len(SIZES)), SIZES)


# ---------------------------------------------------------------------------------- episodes
def test_episode_counts_classes_and_disjointness() -> None:
    eps = sample_episodes(LABELS, way=5, shot=2, queries=3, n=40, seed=1)
    assert [e.id for e in eps] == list(range(40))
    for e in eps:
        assert (e.way, e.shot, e.queries) == (5, 2, 3)
        assert len(set(e.class_ids)) == 5
        assert e.support_idx.shape == (10,) and e.query_idx.shape == (15,)
        assert not set(e.support_idx) & set(e.query_idx)
        assert len(set(e.query_idx)) == 15
        # class-major layout: block k holds images of class_ids[k]
        np.testing.assert_array_equal(LABELS[e.support_idx], np.repeat(e.class_ids, 2))
        np.testing.assert_array_equal(LABELS[e.query_idx], np.repeat(e.class_ids, 3))


def test_episodes_are_deterministic_and_independent_of_n_and_queries() -> None:
    a = sample_episodes(LABELS, way=3, shot=1, queries=4, n=20, seed=7)
    assert a == sample_episodes(LABELS, way=3, shot=1, queries=4, n=20, seed=7)
    assert a[:5] == sample_episodes(LABELS, way=3, shot=1, queries=4, n=5, seed=7)
    assert a != sample_episodes(LABELS, way=3, shot=1, queries=4, n=20, seed=8)
    assert sample_episodes(LABELS, way=3, shot=1, queries=4, n=20, seed=7, ids=[13, 2]) == [
        a[13], a[2]]
    # the query count does not change the class choice or the support set
    b = sample_episodes(LABELS, way=3, shot=1, queries=2, n=20, seed=7)
    assert all(x.class_ids == y.class_ids for x, y in zip(a, b))
    assert all(np.array_equal(x.support_idx, y.support_idx) for x, y in zip(a, b))
    assert all(np.array_equal(x.query_idx[[0, 1, 4, 5, 8, 9]], y.query_idx) for x, y in zip(a, b))


def test_all_queries_uses_every_remaining_image() -> None:
    balanced = np.repeat(np.arange(6), 20)
    for e in sample_episodes(balanced, way=4, shot=5, queries="all", n=10, seed=0):
        assert e.queries == 15
        used = np.concatenate([e.support_idx, e.query_idx])
        assert sorted(used) == sorted(np.flatnonzero(np.isin(balanced, e.class_ids)))
    for e in sample_episodes(LABELS, way=3, shot=2, queries="all", n=20, seed=0):
        assert e.queries == min(SIZES[c] for c in e.class_ids) - 2   # balanced on uneven classes
        assert len(e.query_idx) == 3 * e.queries


def test_shards_partition_the_episode_list() -> None:
    eps = sample_episodes(LABELS, way=2, shot=1, queries=1, n=11, seed=0)
    parts = [shard(eps, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 3]
    assert sorted(e.id for p in parts for e in p) == list(range(11))
    assert [e.id for e in parts[1]] == [1, 4, 7, 10]
    with pytest.raises(ValueError):
        shard(eps, 3, 3)


def test_too_few_classes_raises() -> None:
    with pytest.raises(ValueError, match="classes"):
        sample_episodes(LABELS, way=5, shot=5, queries=6, n=1, seed=0)  # only sizes >= 11: 3


# ---------------------------------------------------------------------------------- classifiers
def _unit(deg: float, r: float = 1.0) -> list[float]:
    return [r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))]


def test_proto_hand_computed() -> None:
    # class 10 support at 0° (norm 10) and 90°: normalise-then-average gives a 45° prototype
    # (averaging raw features would give 5.7°). Class 20 support at -30° (norms 1 and 3).
    feats = torch.tensor([_unit(0, 10), _unit(90), _unit(-30), _unit(-30, 3),
                          _unit(-10, 5), _unit(60, 2), _unit(-40), _unit(30, 7)])
    labels = np.array([10, 10, 20, 20, 10, 10, 20, 20])
    # queries: -10° -> 55° vs 20° -> class 20 (wrong); 60° -> 15° vs 90° -> 10 (right);
    # -40° -> 85° vs 10° -> 20 (right); 30° -> 15° vs 60° -> 10 (wrong)  => accuracy 2/4
    pred = proto(feats[:4], torch.tensor([0, 0, 1, 1]), feats[4:], 2)
    assert pred.tolist() == [1, 0, 1, 0]
    ep = Episode(id=0, way=2, shot=2, queries=2, class_ids=(10, 20),
                 support_idx=np.arange(4), query_idx=np.arange(4, 8))
    swapped = Episode(id=1, way=2, shot=2, queries=2, class_ids=(20, 10),
                      support_idx=np.array([2, 3, 0, 1]), query_idx=np.array([6, 7, 4, 5]))
    assert evaluate_episodes(feats, labels, [ep, swapped], "proto").tolist() == [0.5, 0.5]


def _blobs(n_per: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, 8) * 6.0
    y = torch.arange(3).repeat_interleave(n_per)
    return centres[y] + 0.3 * torch.randn(len(y), 8, generator=g), y


def test_logreg_separates_and_is_optimal() -> None:
    xs, ys = _blobs(3, seed=0)
    xq, yq = _blobs(20, seed=1)
    assert torch.equal(logreg(xs, ys, xq, 3), yq)
    # stationarity of Σ CE + ½‖W‖² on normalised features, checked in NumPy
    x = F.normalize(xs.double(), dim=1).numpy()
    w, b = (t.numpy() for t in fit_logreg(torch.from_numpy(x), ys, 3))
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = p - np.eye(3)[ys.numpy()]
    assert np.abs(r.T @ x + w).max() < 1e-6 and np.abs(r.sum(0)).max() < 1e-6


def test_distlinear_separates() -> None:
    xs, ys = _blobs(2, seed=0)
    xq, yq = _blobs(10, seed=1)
    pred = distlinear(xs, ys, xq, 3, seed=5, epochs=60)
    assert torch.equal(pred, yq)


def test_summarize_by_hand() -> None:
    s = summarize([1.0, 0.5, 0.75, 0.25])
    # percents 100, 50, 75, 25: mean 62.5; deviations ±37.5, ±12.5 -> population var 781.25
    assert s["n"] == 4
    assert s["acc"] == pytest.approx(62.5)
    assert s["ci95"] == pytest.approx(1.96 * math.sqrt(781.25) / 2)


# ---------------------------------------------------------------------------------- evaluators
N_IMAGES, N_CLASSES = 101, 6   # odd size: shards of 51 and 50


def _config(kind: str = "fewshot") -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(arch="conv2"), data=DataConfig(image_size=16),
        eval=EvalConfig(kind=kind, ways=3, shots=(1, 2), queries=4, episodes=9, seed=3,
                        classifiers=("proto", "logreg"), batch_size=16))


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_IMAGES, 3, 16, 16, generator=g)
    return TensorDataset(x, torch.arange(N_IMAGES) % N_CLASSES)


def _method(state: dict | None = None):
    torch.manual_seed(0)
    method = build_method(_config(), N_CLASSES)
    if state is not None:
        method.load_state_dict(state)
    return method


def _run_all(method, data: TensorDataset) -> dict:
    cfg = _config()
    method.eval()  # BN on running statistics, as the evaluators run it
    feats, labels = extract_features(method.features, data, batch_size=16, device="cpu")
    eps = sample_episodes(labels.numpy(), way=3, shot=1, queries=4, n=9, seed=3)
    fs = FewShotEvaluator(cfg, data)(method, "cpu")
    top = Top1Evaluator(cfg, data)(method, "cpu")
    return {"feats": feats, "labels": labels, "fs_metrics": fs.metrics,
            "fs_records": fs.records["episodes"], "top_metrics": top.metrics,
            "accs": evaluate_episodes(feats, labels, eps, "logreg").tolist()}


def _worker(rank: int, init: str, out: str, state: dict) -> None:
    with gloo_group(rank, init):
        torch.save(_run_all(_method(state), _data()), f"{out}/rank{rank}.pt")


def test_fewshot_evaluator_single_process() -> None:
    data, method = _data(), _method()
    method.train()
    res = FewShotEvaluator(_config(), data)(method, "cpu")
    assert method.training and isinstance(res, EvalResult)
    recs = res.records["episodes"]
    assert len(recs) == 2 * 2 * 9
    feats = method.eval().features(data.tensors[0])
    for shot in (1, 2):
        eps = sample_episodes(data.tensors[1].numpy(), way=3, shot=shot, queries=4, n=9, seed=3)
        mine = [r for r in recs if r["shot"] == shot and r["classifier"] == "proto"]
        assert [r["episode_id"] for r in mine] == list(range(9))
        assert [r["class_ids"] for r in mine] == [list(e.class_ids) for e in eps]
        for r, e in zip(mine, eps):
            pred = proto(feats[e.support_idx], torch.from_numpy(e.support_labels()),
                         feats[e.query_idx], 3)
            assert r["accuracy"] == (pred.numpy() == e.query_labels()).mean()
        s = summarize([r["accuracy"] for r in mine])
        assert res.metrics[f"test/acc_3w{shot}s_proto"] == res.metrics[f"test/acc_3w{shot}s"]
        assert res.metrics[f"test/acc_3w{shot}s"] == s["acc"]
        assert res.metrics[f"test/acc_3w{shot}s_ci95"] == s["ci95"]
        assert f"test/acc_3w{shot}s_logreg_ci95" in res.metrics
    FewShotEvaluator(_config(), data)(method, "cpu")
    assert not method.training
    method.train()
    assert method.training


def test_extra_ways_score_each_way_as_its_own_run_would() -> None:
    """eval.extra_ways: one evaluation scores 3-way and 5-way episodes; each equals an evaluation
    configured with that way alone (same features, same episode seeds)."""
    from dataclasses import replace

    data, method = _data(), _method()
    cfg = _config()
    both = FewShotEvaluator(replace(cfg, eval=replace(cfg.eval, extra_ways=(5,))), data)(method, "cpu")
    for way in (3, 5):
        alone = FewShotEvaluator(replace(cfg, eval=replace(cfg.eval, ways=way)), data)(method, "cpu")
        for k, v in alone.metrics.items():
            assert both.metrics[k] == v, k
        assert [r for r in both.records["episodes"] if r["way"] == way] == alone.records["episodes"]
    assert {k for k in both.metrics if "5w" in k} and {k for k in both.metrics if "3w" in k}


class _Labelled(TensorDataset):
    """A dataset exposing `targets`, so the evaluator can draw episodes before embedding."""

    @property
    def targets(self) -> list[int]:
        return self.tensors[1].tolist()


def test_short_evaluation_embeds_only_drawn_images_with_the_same_result() -> None:
    cfg = _config().override({"eval.episodes": 2})     # 2 x 3-way x (2 + 4) = 36 draws < 101
    plain = _data()
    labelled = _Labelled(*plain.tensors)
    method = _method().eval()
    seen: list[int] = []
    features = method.features

    def counting(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return features(x)

    method.features = counting
    full = FewShotEvaluator(cfg, plain)(method, "cpu")
    assert sum(seen) == N_IMAGES
    seen.clear()
    short = FewShotEvaluator(cfg, labelled)(method, "cpu")
    drawn = set()
    for shot in (1, 2):
        for e in sample_episodes(plain.tensors[1].numpy(), way=3, shot=shot, queries=4, n=2,
                                 seed=3):
            drawn |= set(e.support_idx.tolist()) | set(e.query_idx.tolist())
    assert sum(seen) == len(drawn) < N_IMAGES
    assert short.metrics == full.metrics and short.records == full.records


def test_top1_evaluator_by_hand() -> None:
    data, method = _data(), _method()
    method.eval()
    res = Top1Evaluator(_config("top1"), data)(method, "cpu")
    x, y = data.tensors
    logits = method.logits(x)
    top1 = int((logits.argmax(1) == y).sum())
    top5 = int((logits.topk(5, dim=1).indices == y[:, None]).any(dim=1).sum())
    assert res.metrics["test/top1"] == pytest.approx(100 * top1 / N_IMAGES, abs=1e-12)
    assert res.metrics["test/top5"] == pytest.approx(100 * top5 / N_IMAGES, abs=1e-12)
    assert res.metrics["test/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert res.metrics["test/n_images"] == N_IMAGES


def test_build_evaluator_kinds() -> None:
    data = _data()
    assert isinstance(build_evaluator(_config("fewshot"), data), FewShotEvaluator)
    assert isinstance(build_evaluator(_config("top1"), data), Top1Evaluator)
    assert build_evaluator(_config("none"), data) is None


def test_ddp_equals_single_process(tmp_path: Path) -> None:
    method = _method()
    single = _run_all(method, _data())
    state = {k: v.clone() for k, v in method.state_dict().items()}
    mp.spawn(_worker, args=(f"file://{tmp_path}/init", str(tmp_path), state), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["labels"], single["labels"])
        torch.testing.assert_close(got["feats"], single["feats"], rtol=1e-5, atol=1e-6)
        assert got["accs"] == single["accs"]
        assert got["fs_metrics"] == single["fs_metrics"]
        assert got["fs_records"] == single["fs_records"]
        top, ref = got["top_metrics"], single["top_metrics"]
        assert (top["test/top1"], top["test/top5"]) == (ref["test/top1"], ref["test/top5"])
        assert top["test/loss"] == pytest.approx(ref["test/loss"], rel=1e-6)


@pytest.mark.parametrize("split", ["val", "test"])
def test_every_evaluator_names_its_metrics_after_eval_split(split: str) -> None:
    """Few-shot, top-1 and FSCIL metrics are `<eval.split>/<name>`, `_ci95` beside them; no key of
    the other split appears (COCO: tests/test_mkd_method.py)."""
    from dataclasses import replace

    from kdray.eval.fscil import session_metrics

    other = {"val": "test", "test": "val"}[split]
    data, method = _data(), _method()
    for kind, ev in (("fewshot", FewShotEvaluator), ("top1", Top1Evaluator)):
        cfg = _config(kind)
        cfg = replace(cfg, eval=replace(cfg.eval, split=split))
        m = ev(cfg, data)(method, "cpu").metrics
        assert m and all(k.startswith(f"{split}/") for k in m), (kind, sorted(m))
        assert not any(k.startswith(f"{other}/") for k in m)
    assert f"{split}/acc_3w1s_ci95" in FewShotEvaluator(
        replace(_config(), eval=replace(_config().eval, split=split)), data)(method, "cpu").metrics
    rec = [{"session": t, "session_acc": 50.0 + t, "base_acc": 60.0, "novel_acc": 40.0,
            "hm": 48.0} for t in range(3)]
    assert set(session_metrics(rec, split)) == {f"{split}/fscil_{k}" for k in (
        "s0", "s1", "s2", "avg", "pd", "last", "base", "novel", "hm")}
