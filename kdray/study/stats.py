"""Statistics for study tables: paired differences against a baseline row, their 95% intervals,
the binomial interval of one top-1 run, and mean ± sample std over seeds. No Ray, no MLflow.

Pairing (row − baseline, same units as the metric, e.g. accuracy points):

- few-shot rows pair per (seed, episode id): for a seed both rows are scored on the same episodes
  (episode i is fixed by ``eval.seed``, way, shot and i). The episodes of one seed share that
  seed's training run, so they are not independent draws: with ``MIN_N`` (3) or more paired seeds
  the interval is over the seeds (each seed's mean episode difference, t-interval with n = seeds),
  which carries seed-to-seed training noise; with fewer seeds it is over the pooled episodes and
  says how many seeds it rests on (it then covers episode sampling only, not training noise).
- top-1 / FSCIL Avg / box AP rows pair per seed: mean Δ over the common seeds with
  ``t_{0.975, n-1} · s / √n``; fewer than ``MIN_N`` (3) pairs give no interval ("n too small").

A difference is marked significant (``*``) when its 95% interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _st

LEVEL = 0.95
MIN_N = 3  # fewer paired values than this: no interval, never a made-up one
TOO_SMALL = "n too small"


@dataclass(frozen=True)
class Delta:
    """A paired difference row − baseline: its mean over `n` pairs and its interval (None when
    n < MIN_N). `pairing` says what was paired ("episodes" or "seeds")."""

    mean: float
    n: int
    low: float | None = None
    high: float | None = None
    pairing: str = "seeds"
    also: str = ""  # what else the pairs rest on, e.g. "1500 episodes" or "1 seed"

    @property
    def significant(self) -> bool:
        """True when the interval exists and excludes 0."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 2) -> str:
        """e.g. "+1.20 [+0.31, +2.09] * (600 episodes)", or "+1.20 (n too small: 2 seeds)"."""
        mean = f"{self.mean:+.{digits}f}"
        count = f"{self.n} {self.pairing[:-1] if self.n == 1 else self.pairing}"
        count += f", {self.also}" if self.also else ""
        if self.low is None or self.high is None:
            return f"{mean} ({TOO_SMALL}: {count})"
        return (f"{mean} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]{mark(self)} "
                f"({count})")


def mark(d: Delta | None) -> str:
    """The significance mark: " *" when `d`'s interval excludes 0, else the empty string."""
    return " *" if d is not None and d.significant else ""


def mean_std(values: Sequence[float]) -> tuple[float, float | None, int]:
    """(mean, sample std with ddof=1 or None for one value, n). Raises on no values."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("mean_std needs at least one value")
    mean = math.fsum(v) / len(v)
    if len(v) < 2:
        return mean, None, len(v)
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (len(v) - 1)), len(v)


def t_interval(diffs: Sequence[float], *, level: float = LEVEL, pairing: str = "seeds",
               also: str = "") -> Delta:
    """Mean of paired differences with the t-interval mean ± t_{(1+level)/2, n-1} · s / √n
    (s: sample std); no interval when n < MIN_N."""
    mean, s, n = mean_std(diffs)
    if n < MIN_N or s is None:
        return Delta(mean, n, pairing=pairing, also=also)
    half = float(_st.t.ppf((1 + level) / 2, n - 1)) * s / math.sqrt(n)
    return Delta(mean, n, mean - half, mean + half, pairing, also)


def _paired(row: Mapping[Hashable, float], base: Mapping[Hashable, float]) -> list[float]:
    keys = [k for k in row if k in base]
    if not keys:
        raise ValueError("no common keys to pair the row with the baseline")
    return [float(row[k]) - float(base[k]) for k in keys]


def paired_seed_delta(row: Mapping[int, float], base: Mapping[int, float], *,
                      level: float = LEVEL) -> Delta:
    """Δ of a per-seed metric (top-1, FSCIL Avg, box AP): `{seed: value}` of the row and of the
    baseline, paired on their common seeds, t-interval over the seeds."""
    return t_interval(_paired(row, base), level=level, pairing="seeds")


def paired_episode_delta(row: Mapping[tuple[int, int], float],
                         base: Mapping[tuple[int, int], float], *,
                         level: float = LEVEL) -> Delta:
    """Δ of few-shot accuracy: `{(seed, episode id): accuracy}` of the row and of the baseline,
    paired per (seed, episode). With MIN_N or more seeds: the mean of each seed's mean
    difference, t-interval over the seeds ("3 seeds, 1500 episodes"); with fewer: t-interval
    over all pooled pairs ("500 episodes, 1 seed"), which leaves training noise out."""
    by_seed: dict[Hashable, list[float]] = {}
    for k in row:
        if k in base:
            by_seed.setdefault(k[0], []).append(float(row[k]) - float(base[k]))
    if not by_seed:
        raise ValueError("no common keys to pair the row with the baseline")
    pairs = sum(len(v) for v in by_seed.values())
    if len(by_seed) >= MIN_N:
        return t_interval([math.fsum(v) / len(v) for v in by_seed.values()], level=level,
                          pairing="seeds", also=f"{pairs} episodes")
    seeds = len(by_seed)
    return t_interval([d for v in by_seed.values() for d in v], level=level,
                      pairing="episodes", also=f"{seeds} seed{'s' if seeds > 1 else ''}")


def wilson_interval(successes: float, n: int, *, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (successes out of n), as proportions."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, {n}]")
    z = float(_st.norm.ppf((1 + level) / 2))
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def top1_interval(top1_pct: float, n_images: int, *, level: float = LEVEL) -> tuple[float, float]:
    """Wilson interval, in percent, of one run's top-1 (percent) over `n_images` images: how far
    the evaluation set alone lets the number move (not seed-to-seed noise)."""
    k = round(top1_pct / 100.0 * n_images)
    low, high = wilson_interval(k, n_images, level=level)
    return 100.0 * low, 100.0 * high
