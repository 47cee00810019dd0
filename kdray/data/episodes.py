"""Seeded N-way K-shot episodes over a labelled index set.

Episode ``i`` is drawn by its own generator ``numpy.random.default_rng([seed, way, shot, i])``, so it
depends only on ``(seed, way, shot, i)`` and the labels: every trial, every world size and every
shard of the id range sees the same episode ``i``. The draw order is fixed (classes first, then one
permutation per chosen class), so the support set and class choice of episode ``i`` do not depend
on the number of queries either.

``queries="all"`` follows the SMKD / HCTransformers protocol (600 - K queries per class on 600-image
classes): every remaining image of each chosen class is a query. When the chosen classes have
different sizes the episode is kept balanced: each class gets ``min(class size) - shot`` queries
(the official code instead samples a fixed 600 - K, which only matters on tiered-ImageNet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

T = TypeVar("T")
Queries = int | Literal["all"]


@dataclass(frozen=True, eq=False)
class Episode:
    """One few-shot task; all index arrays are class-major (class ``class_ids[0]`` first).

    Attributes:
        id: episode number; with (seed, way, shot) it determines the draw.
        way: number of classes N.
        shot: support images per class K.
        queries: query images per class (resolved when sampled with ``queries="all"``).
        class_ids: the N dataset labels, in episode-label order (class ``c`` -> label ``k``).
        support_idx: (N*K,) int64 dataset indices.
        query_idx: (N*queries,) int64 dataset indices, disjoint from ``support_idx``.
    """

    id: int
    way: int
    shot: int
    queries: int
    class_ids: tuple[int, ...]
    support_idx: np.ndarray
    query_idx: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Episode):
            return NotImplemented
        return (self.id, self.way, self.shot, self.queries, self.class_ids) == (
            other.id, other.way, other.shot, other.queries, other.class_ids
        ) and np.array_equal(self.support_idx, other.support_idx) and np.array_equal(
            self.query_idx, other.query_idx)

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    def support_labels(self) -> np.ndarray:
        """(N*K,) episode labels 0..N-1 of the support images."""
        return np.repeat(np.arange(self.way), self.shot)

    def query_labels(self) -> np.ndarray:
        """(N*queries,) episode labels 0..N-1 of the query images."""
        return np.repeat(np.arange(self.way), self.queries)


def _by_class(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Sorted class id -> ascending dataset indices of that class."""
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    groups = np.split(order, starts[1:])
    return {int(c): g.astype(np.int64) for c, g in zip(classes, groups)}


def _check(way: int, shot: int, queries: Queries, n: int, seed: int) -> None:
    if way < 1 or shot < 1 or n < 0 or seed < 0:
        raise ValueError(f"need way >= 1, shot >= 1, n >= 0, seed >= 0; "
                         f"got way={way}, shot={shot}, n={n}, seed={seed}")
    if queries != "all" and (isinstance(queries, bool) or not isinstance(queries, int | np.integer)
                             or queries < 1):
        raise ValueError(f"queries must be an int >= 1 or 'all', got {queries!r}")


def _draw(i: int, pool: list[np.ndarray], pool_ids: np.ndarray, *, way: int, shot: int,
          queries: Queries, seed: int) -> Episode:
    """Episode ``i`` (pure function of its arguments)."""
    rng = np.random.default_rng([seed, way, shot, i])
    chosen = rng.choice(len(pool), size=way, replace=False)
    perms = [rng.permutation(pool[c]) for c in chosen]
    q = min(len(p) for p in perms) - shot if queries == "all" else int(queries)
    support = np.concatenate([p[:shot] for p in perms])
    query = np.concatenate([p[shot:shot + q] for p in perms])
    return Episode(id=i, way=way, shot=shot, queries=q,
                   class_ids=tuple(int(pool_ids[c]) for c in chosen),
                   support_idx=support, query_idx=query)


def sample_episodes(labels: Sequence[int] | np.ndarray, *, way: int, shot: int, queries: Queries,
                    n: int, seed: int, ids: Sequence[int] | None = None) -> list[Episode]:
    """Deterministic few-shot episodes.

    Args:
        labels: (M,) class label of every dataset item; the returned indices point into it.
        way: classes per episode.
        shot: support images per class.
        queries: query images per class, or ``"all"`` (every remaining image, balanced).
        n: number of episodes (ids ``0 .. n-1``).
        seed: episode seed (``cfg.eval.seed``); with ``(way, shot, id)`` it fixes each draw.
        ids: optional subset of ``range(n)`` to draw (e.g. this rank's shard); same episodes as
            in the full list.

    Returns:
        The episodes, in the order of ``ids`` (default ``0 .. n-1``).

    Raises:
        ValueError: bad arguments, an id outside ``range(n)``, or fewer than ``way`` classes
            with at least ``shot + queries`` (``shot + 1`` for "all") images.
    """
    _check(way, shot, queries, n, seed)
    groups = _by_class(np.asarray(labels, dtype=np.int64).reshape(-1))
    need = shot + (1 if queries == "all" else int(queries))
    pool_ids = np.array([c for c, g in groups.items() if len(g) >= need], dtype=np.int64)
    if len(pool_ids) < way:
        raise ValueError(f"{way}-way {shot}-shot episodes with queries={queries!r} need {way} "
                         f"classes with >= {need} images; only {len(pool_ids)} of "
                         f"{len(groups)} classes qualify")
    pool = [groups[int(c)] for c in pool_ids]
    todo = range(n) if ids is None else ids
    if any(not 0 <= int(i) < n for i in todo):
        raise ValueError(f"episode ids must lie in [0, {n})")
    return [_draw(int(i), pool, pool_ids, way=way, shot=shot, queries=queries, seed=seed)
            for i in todo]


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The strided share of ``items`` that ``rank`` of ``world`` handles (items[rank::world])."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    return list(items[rank::world])
