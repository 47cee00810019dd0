"""Which results a Δ pairs: per (seed, episode) for few-shot accuracies with episode records,
else per seed (`kdray.study.stats` computes the intervals). Used by the results table, the
claims and the figures."""

from __future__ import annotations

import math
import re
from typing import Any

from kdray.study import stats

_FEWSHOT = re.compile(r"(?:^|/)acc_(\d+)w(\d+)s(?:_(\w+))?$")  # val/acc_5w1s[_classifier]


def finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def row_delta(group: list[dict[str, Any]], base: list[dict[str, Any]],
              key: str) -> stats.Delta | None:
    """Δ of `key` for a setting's finished trials vs the baseline's: per (seed, episode) when
    `key` is a few-shot accuracy and both sides have episode records, else per seed; None when
    nothing pairs."""
    if _FEWSHOT.search(key):
        a, b = episode_accuracies(group, key), episode_accuracies(base, key)
        if a and b and a.keys() & b.keys():
            return stats.paired_episode_delta(a, b)
    a = {r["seed"]: float(r["metrics"][key]) for r in group if finite(r["metrics"].get(key))}
    b = {r["seed"]: float(r["metrics"][key]) for r in base if finite(r["metrics"].get(key))}
    if not a.keys() & b.keys():
        return None
    return stats.paired_seed_delta(a, b)


def episode_accuracies(trials: list[dict[str, Any]], key: str) -> dict[tuple[Any, int], float]:
    """{(seed, episode id): accuracy in percent} of the few-shot metric `key` (e.g.
    val/acc_5w1s: way 5, shot 1, the trial's first classifier; val/acc_5w1s_logreg: that one)
    from the trials' episode records."""
    m = _FEWSHOT.search(key)
    if m is None:
        return {}
    way, shot = int(m.group(1)), int(m.group(2))
    out: dict[tuple[Any, int], float] = {}
    for t in trials:
        recs = [r for r in t.get("episodes") or ()
                if int(r["way"]) == way and int(r["shot"]) == shot]
        clf = m.group(3) or ((t.get("classifiers") or [None])[0]
                             or (recs[0]["classifier"] if recs else None))
        for r in recs:
            if r["classifier"] == clf:
                out[(t["seed"], int(r["episode_id"]))] = 100.0 * float(r["accuracy"])
    return out
