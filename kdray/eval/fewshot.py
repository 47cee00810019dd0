"""Few-shot episode evaluation (SMKD protocol, docs/methods/smkd.md §1.4), sharded over DDP ranks.

Features are extracted once per evaluation: each rank embeds a strided shard of the dataset and the
shards are all-gathered back into dataset order, so every rank holds the same (N, D) matrix. Episodes
are then split the same strided way; each rank scores its episodes, the per-episode accuracies are
all-gathered and put back in episode-id order. Episode ``i`` is the same draw whatever the world size
(``kdray.data.episodes``), so the result equals the single-process result.

Accuracy is the mean over episodes; the 95% interval is 1.96·std/√n with the *population* std
(ddof=0), as the official ``fseval.test_methods`` computes it with ``np.std``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from kdray import dist
from kdray.data.episodes import Episode, sample_episodes, shard
from kdray.data.loader import eval_loader
from kdray.eval.classifiers import CLASSIFIERS, Classifier, distlinear, logreg, proto

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig
    from kdray.methods.base import Method

__all__ = ["CLASSIFIERS", "EvalResult", "FewShotEvaluator", "distlinear", "evaluate_episodes",
           "extract_features", "logreg", "proto", "summarize"]

CHUNK = 256  # episodes sampled at a time per rank (bounds memory with "all" queries)


@dataclass
class EvalResult:
    """What an evaluator returns: scalar metrics and named record tables (e.g. "episodes")."""

    metrics: dict[str, float] = field(default_factory=dict)
    records: dict[str, list[dict]] = field(default_factory=dict)


def shard_loader(dataset: Dataset, *, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A loader over this rank's strided shard ``rank, rank + world, ...`` (no padding, no drop)."""
    idx = range(dist.rank(), len(dataset), dist.world_size())  # type: ignore[arg-type]
    return eval_loader(dataset, idx, batch_size=batch_size, num_workers=num_workers)


def unpack(batch: Any) -> tuple[Tensor, Tensor]:
    """(images (B, C, H, W), labels (B,)) from a collated ``(image, label, ...)`` batch."""
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise TypeError("evaluation datasets must yield (image, label, ...) items, "
                    f"got a batch of type {type(batch).__name__}")


def _gather_strided(feats: Tensor, labels: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Reassemble per-rank strided shards (rank r holds items r, r+W, ...) in dataset order."""
    world = dist.world_size()
    if world == 1:
        return feats.cpu(), labels.cpu()
    dim = max(dist.all_gather_object(feats.shape[1] if len(feats) else 0))
    rows = -(-n // world)  # ceil: the largest shard
    pad_f = feats.new_zeros(rows, dim)
    pad_f[: len(feats)] = feats
    pad_y = labels.new_full((rows,), -1)
    pad_y[: len(labels)] = labels
    all_f, all_y = dist.all_gather_cat(pad_f).cpu(), dist.all_gather_cat(pad_y).cpu()
    i = torch.arange(n)
    src = (i % world) * rows + i // world  # item i sits at row i // W of rank i % W
    return all_f[src], all_y[src]


@torch.no_grad()
def extract_features(fn: Callable[[Tensor], Tensor], dataset: Dataset, *, batch_size: int,
                     device: torch.device | str, num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """Embed every item of ``dataset``; identical full result on every rank.

    Args:
        fn: (B, C, H, W) -> (B, D) feature function (e.g. ``method.features``).
        dataset: map-style dataset yielding ``(image, label, ...)``.
        batch_size: per-rank batch size.
        device: where ``fn`` runs.
        num_workers: DataLoader workers.

    Returns:
        feats (N, D) float32 and labels (N,) int64, both on CPU, in dataset order.
    """
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    for batch in shard_loader(dataset, batch_size=batch_size, num_workers=num_workers):
        x, y = unpack(batch)
        feats.append(fn(x.to(device, non_blocking=True)).float())
        labels.append(y.to(device=feats[-1].device, dtype=torch.int64))
    if feats:
        f, y = torch.cat(feats), torch.cat(labels)
    else:  # fewer items than ranks
        f = torch.zeros(0, 0, device=device)
        y = torch.zeros(0, dtype=torch.int64, device=device)
    return _gather_strided(f, y, len(dataset))  # type: ignore[arg-type]


def _targets(dataset: Dataset) -> np.ndarray | None:
    """Every item's label without loading images (datasets exposing ``targets``), else None."""
    t = getattr(dataset, "targets", None)
    return None if t is None else np.asarray(t, dtype=np.int64).reshape(-1)


def _classifier(classifier: str | Classifier) -> Classifier:
    if callable(classifier):
        return classifier
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; choose one of {sorted(CLASSIFIERS)}")
    return CLASSIFIERS[classifier]


def _episode_accuracy(feats: Tensor, labels: np.ndarray, ep: Episode, clf: Classifier) -> float:
    """Share of correctly classified queries of one episode (exact ratio of two integers)."""
    classes = np.asarray(ep.class_ids)
    s_y = np.argmax(labels[ep.support_idx, None] == classes[None, :], axis=1)
    q_y = np.argmax(labels[ep.query_idx, None] == classes[None, :], axis=1)
    s_idx, q_idx = torch.from_numpy(ep.support_idx), torch.from_numpy(ep.query_idx)
    pred = clf(feats[s_idx], torch.from_numpy(s_y), feats[q_idx], ep.way, ep.id)
    return int((pred.cpu().numpy() == q_y).sum()) / len(q_y)


def _gather_by_id(local: list[tuple[int, Any]]) -> dict[int, Any]:
    return {k: v for part in dist.all_gather_object(local) for k, v in part}


def evaluate_episodes(feats: Tensor, labels: Tensor | np.ndarray, episodes: Sequence[Episode],
                      classifier: str | Classifier) -> np.ndarray:
    """Per-episode accuracies, computed on this rank's strided share and gathered.

    Args:
        feats: (N, D) features, identical on every rank.
        labels: (N,) dataset labels.
        episodes: the full episode list (same on every rank).
        classifier: a name in ``CLASSIFIERS`` or a classifier function.

    Returns:
        (len(episodes),) float64 accuracies in [0, 1], in the order of ``episodes``.
    """
    clf, y = _classifier(classifier), np.asarray(labels, dtype=np.int64)
    mine = shard(episodes, dist.rank(), dist.world_size())
    acc = _gather_by_id([(ep.id, _episode_accuracy(feats, y, ep, clf)) for ep in mine])
    return np.array([acc[ep.id] for ep in episodes], dtype=np.float64)


def summarize(accs: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean accuracy and 95% interval in percent: {"acc", "ci95" = 1.96·std/√n, "n"} (std ddof=0)."""
    pct = np.asarray(accs, dtype=np.float64).reshape(-1) * 100.0
    if pct.size == 0:
        raise ValueError("summarize() needs at least one accuracy")
    n = pct.size
    return {"acc": float(pct.mean()), "ci95": float(1.96 * pct.std() / np.sqrt(n)), "n": n}


class FewShotEvaluator:
    """``cfg.eval.episodes`` episodes per shot count, scored by each of ``cfg.eval.classifiers``."""

    def __init__(self, cfg: ExperimentConfig, dataset: Dataset) -> None:
        self.cfg = cfg
        self.ecfg = cfg.eval
        self.dataset = dataset
        for name in self.ecfg.classifiers:
            _classifier(name)

    def __call__(self, method: Method, device: torch.device | str) -> EvalResult:
        """Evaluate ``method.features``; the method is left in the train/eval mode it came in."""
        was_training = method.training
        method.eval()
        targets = _targets(self.dataset)
        used = None if targets is None else self._used_indices(targets)
        try:
            if used is None:
                feats, labels = extract_features(method.features, self.dataset,
                                                 batch_size=self.ecfg.batch_size, device=device,
                                                 num_workers=self.cfg.data.loader_workers)
            else:  # embed only the images some episode draws; the rest stay zero, never read
                sub, _ = extract_features(method.features, Subset(self.dataset, used.tolist()),
                                          batch_size=self.ecfg.batch_size, device=device,
                                          num_workers=self.cfg.data.loader_workers)
                feats = sub.new_zeros(len(targets), sub.shape[1])
                feats[torch.from_numpy(used)] = sub
                labels = torch.from_numpy(targets)
        finally:
            method.train(was_training)
        metrics: dict[str, float] = {}
        records: list[dict] = []
        for way, shot in ((w, s) for w in self.ecfg.all_ways for s in self.ecfg.shots):
            rows = self._score_shot(feats, labels.numpy(), way, shot)
            for k, name in enumerate(self.ecfg.classifiers):
                stats = summarize([r["accuracy"] for r in rows[name]])
                key = self.ecfg.key(f"acc_{way}w{shot}s")
                keys = [f"{key}_{name}"] + ([key] if k == 0 else [])
                for base in keys:
                    metrics[base], metrics[f"{base}_ci95"] = stats["acc"], stats["ci95"]
                records.extend(rows[name])
        return EvalResult(metrics=metrics, records={"episodes": records})

    def _used_indices(self, targets: np.ndarray) -> np.ndarray | None:
        """Sorted dataset indices drawn by any episode, or None when (nearly) all are: a short
        smoke evaluation on a large split then embeds a fraction of it. Episodes depend only on
        the labels and (seed, way, shot, id), so they are drawn here and again when scoring."""
        e = self.ecfg
        if e.queries in ("all", 0):
            return None
        if (e.episodes * sum(e.all_ways) * (max(e.shots) + int(e.queries))) >= len(targets):
            return None
        used = np.zeros(len(targets), dtype=bool)
        for way, shot in ((w, s) for w in e.all_ways for s in e.shots):
            for ep in sample_episodes(targets, way=way, shot=shot, queries=e.queries,
                                      n=e.episodes, seed=e.seed):
                used[np.asarray(ep.support_idx)] = True
                used[np.asarray(ep.query_idx)] = True
        return np.flatnonzero(used)

    def _score_shot(self, feats: Tensor, labels: np.ndarray, way: int, shot: int
                    ) -> dict[str, list[dict]]:
        """Episode records per classifier, in episode-id order, identical on every rank."""
        e = self.ecfg
        mine = shard(range(e.episodes), dist.rank(), dist.world_size())
        clfs = {name: _classifier(name) for name in e.classifiers}
        queries = "all" if e.queries in ("all", 0) else e.queries  # 0: sentinel for "all"
        local: list[tuple[int, tuple]] = []
        for start in range(0, len(mine), CHUNK):  # sampled lazily: "all" episodes are large
            for ep in sample_episodes(labels, way=way, shot=shot, queries=queries,
                                      n=e.episodes, seed=e.seed, ids=mine[start:start + CHUNK]):
                accs = tuple(_episode_accuracy(feats, labels, ep, c) for c in clfs.values())
                local.append((ep.id, (ep.queries, ep.class_ids, accs)))
        done = _gather_by_id(local)
        out: dict[str, list[dict]] = {name: [] for name in clfs}
        for i in range(e.episodes):
            queries, class_ids, accs = done[i]
            for name, acc in zip(clfs, accs):
                out[name].append({"episode_id": i, "way": way, "shot": shot,
                                  "queries": queries, "class_ids": list(class_ids),
                                  "classifier": name, "accuracy": acc})
        return out
