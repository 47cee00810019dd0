"""kdray.study.stats against hand-computed numbers (t quantiles from a printed t table), and the
study table's per-setting summary: Δ vs the baseline, its 95% CI, n and the significance mark,
on synthetic trial records with a planted better row and a planted identical row. No Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdray.config import ConfigError, ExperimentConfig
from kdray.study import Row, Study
from kdray.study import stats as S
from kdray.study.pairing import episode_accuracies
from kdray.study.table import summarize_rows, write_results_md

T2, T3, T5 = 4.303, 3.182, 2.571  # t_{0.975, df} for df = 2, 3, 5 (t table, 3 decimals)
TOL = 2e-3


def test_t_interval_matches_hand_computation():
    # [2, 3, 4, 5]: mean 3.5, s^2 = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; half = t3 * s / 2
    d = S.t_interval([2.0, 3.0, 4.0, 5.0])
    half = T3 * math.sqrt(5 / 3) / 2  # 2.0542
    assert (d.mean, d.n) == (3.5, 4)
    assert d.low == pytest.approx(3.5 - half, abs=TOL) and d.high == pytest.approx(3.5 + half, abs=TOL)
    assert d.significant and S.mark(d) == " *"
    # [1, 2, 3]: mean 2, s = 1, half = t2 / sqrt(3) = 2.4842: the interval contains 0
    d = S.t_interval([1.0, 2.0, 3.0])
    assert d.low == pytest.approx(2 - T2 / math.sqrt(3), abs=TOL)
    assert d.high == pytest.approx(2 + T2 / math.sqrt(3), abs=TOL)
    assert not d.significant and S.mark(d) == ""
    # all below zero is significant too (two-sided)
    assert S.t_interval([-2.0, -3.0, -4.0, -5.0]).significant


def test_paired_seed_delta_pairs_common_seeds_only():
    row = {0: 71.0, 1: 73.0, 2: 70.0, 3: 99.0}   # seed 3 has no baseline: not paired
    base = {0: 70.0, 1: 70.0, 2: 68.0}
    d = S.paired_seed_delta(row, base)            # diffs 1, 3, 2: mean 2, s = 1
    assert (d.mean, d.n, d.pairing) == (2.0, 3, "seeds")
    assert d.low == pytest.approx(2 - T2 / math.sqrt(3), abs=TOL)
    assert "(3 seeds)" in d.text()
    with pytest.raises(ValueError, match="no common"):
        S.paired_seed_delta({5: 1.0}, base)


def test_paired_episode_delta_pools_episodes_of_fewer_than_three_seeds():
    base = {(0, 0): 50, (0, 1): 60, (0, 2): 70, (1, 0): 40, (1, 1): 55, (1, 2): 65}
    row = {(0, 0): 54, (0, 1): 63, (0, 2): 76, (1, 0): 45, (1, 1): 57, (1, 2): 70, (2, 0): 0}
    # 2 common seeds: diffs 4, 3, 6, 5, 2, 5 pooled: mean 25/6; squared deviations 65/6, s^2 = 13/6
    d = S.paired_episode_delta(row, base)
    half = T5 * math.sqrt(13 / 6) / math.sqrt(6)  # 1.5447
    assert d.n == 6 and d.pairing == "episodes" and d.mean == pytest.approx(25 / 6)
    assert d.low == pytest.approx(25 / 6 - half, abs=TOL)
    assert d.high == pytest.approx(25 / 6 + half, abs=TOL)
    assert d.significant and d.text() == "+4.17 [+2.62, +5.71] * (6 episodes, 2 seeds)"
    one = S.paired_episode_delta({(0, i): 60.0 + i for i in range(3)},
                                 {(0, i): 50.0 for i in range(3)})
    assert one.text() == "+11.00 [+8.52, +13.48] * (3 episodes, 1 seed)"


def test_paired_episode_delta_of_three_seeds_is_over_the_seeds():
    """Episodes of one seed share its training run: from three seeds on, each seed's mean
    episode difference is one value and the interval is a t-interval over the seeds."""
    base = {(s, e): 50.0 for s in range(3) for e in range(4)}
    # seed means of the differences: 1, 2, 6 (episodes spread around them: +-1, +-3, 0)
    spread = {0: (0, 0, 1, -1), 1: (3, -3, 0, 0), 2: (0, 0, 0, 0)}
    row = {(s, e): 50.0 + m + spread[s][e] for s, m in ((0, 1.0), (1, 2.0), (2, 6.0))
           for e in range(4)}
    d = S.paired_episode_delta(row, base)
    # seed means 1, 2, 6: mean 3, s^2 = (4 + 1 + 9) / 2 = 7, half = t2 * sqrt(7 / 3) = 6.573
    half = T2 * math.sqrt(7 / 3)
    assert (d.mean, d.n, d.pairing) == (3.0, 3, "seeds")
    assert d.low == pytest.approx(3 - half, abs=TOL) and d.high == pytest.approx(3 + half, abs=TOL)
    assert not d.significant and d.text() == "+3.00 [-3.57, +9.57] (3 seeds, 12 episodes)"
    # pooled over the 12 episodes the same numbers would look significant
    pooled = S.t_interval([row[k] - base[k] for k in base], pairing="episodes")
    assert pooled.significant


def test_fewer_than_three_pairs_give_no_interval():
    for diffs in ([10.0, 10.1], [5.0]):
        d = S.t_interval(diffs)
        assert d.low is None and d.high is None and not d.significant
        assert "n too small" in d.text()
    d = S.paired_seed_delta({0: 72.0, 1: 73.0}, {0: 60.0, 1: 61.0})
    assert d.text() == "+12.00 (n too small: 2 seeds)"


def test_wilson_interval_matches_hand_computation():
    # 80/100, z = 1.96: center (0.8 + z^2/200) / (1 + z^2/100) = 0.7889, half 0.0777
    low, high = S.wilson_interval(80, 100)
    assert low == pytest.approx(0.7112, abs=2e-4) and high == pytest.approx(0.8666, abs=2e-4)
    assert S.top1_interval(80.0, 100) == pytest.approx((100 * low, 100 * high))
    # 0/10: [0, z^2 / (n + z^2)] = [0, 3.8415 / 13.8415]
    low, high = S.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    with pytest.raises(ValueError):
        S.wilson_interval(11, 10)


def test_mean_std_is_the_sample_std():
    assert S.mean_std([60.0, 62.0, 67.0]) == pytest.approx((63.0, math.sqrt(13.0), 3))
    assert S.mean_std([5.0]) == (5.0, None, 1)


# ---------------------------------------------------------------- study tables

EPISODES = 100


def _fewshot_trial(label: str, seed: int, accs: np.ndarray) -> dict:
    """A finished trial record as run_study hands it over: metrics, config, episode records."""
    recs = [{"episode_id": i, "way": 5, "shot": 1, "classifier": "proto", "accuracy": float(a)}
            for i, a in enumerate(accs)]
    recs += [{"episode_id": i, "way": 5, "shot": 1, "classifier": "logreg", "accuracy": 0.0}
             for i in range(len(accs))]  # another classifier: must not be paired
    return {"name": f"{label}-s{seed}", "label": label, "seed": seed, "params": {},
            "metrics": {"test/acc_5w1s": 100 * float(np.mean(accs)), "epoch": 2},
            "status": "finished", "run_id": f"run-{label}-{seed}", "paper": "",
            "config": {"eval": {"classifiers": ["proto", "logreg"]}}, "episodes": recs}


def _summary_line(text: str, label: str) -> str:
    part = text.split("Per setting over its seeds that ran to the end")[1]
    return next(line for line in part.splitlines() if line.startswith(f"| {label} |"))


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_fewshot_table_marks_a_planted_better_row_and_not_an_identical_one(tmp_path, seeds):
    """Per-episode pairing: +5 points on every episode (with noise) is significant with one seed
    (interval over the episodes) and with three (interval over the seeds); a row equal to the
    baseline up to noise of mean zero is not."""
    rng = np.random.default_rng(0)
    study = Study(name="fs", base=ExperimentConfig(), metric="acc_5w1s",
                  rows=(Row("base", {}), Row("better", {}), Row("same", {})),
                  columns=(("5w1s", "acc_5w1s"),))
    trials = []
    for seed in seeds:
        base = rng.uniform(0.3, 0.7, EPISODES)
        trials += [_fewshot_trial("base", seed, base),
                   _fewshot_trial("better", seed, base + 0.05 + rng.normal(0, 0.03, EPISODES)),
                   _fewshot_trial("same", seed, base + rng.normal(0, 0.03, EPISODES))]
    text = write_results_md(study, summarize_rows(study, trials), str(tmp_path / "fs.md"),
                            header={"study": "fs"})
    n = len(seeds)
    assert "| setting | n | 5w1s | Δ 5w1s [95% CI] | paper |" in text
    assert _summary_line(text, "base").startswith(f"| base | {n} |")
    assert "| baseline |" in _summary_line(text, "base")
    better = _summary_line(text, "better")
    assert f"| better | {n} |" in better
    count = f"({EPISODES} episodes, 1 seed)" if n == 1 else f"({n} seeds, {n * EPISODES} episodes)"
    assert " * " in better and count in better
    delta = float(better.split(" | ")[3].split(" ")[0])  # the planted +5 points, give or take
    assert 4.0 < delta < 6.0, better
    same = _summary_line(text, "same")
    assert "[-" in same and " * " not in same and count in same
    # the per-trial table keeps run ids, status and the paper column
    assert "| `run-better-0` |" in text and "| paper | epochs | status | MLflow run |" in text
    assert "- study: fs" in text


def test_episode_accuracies_pick_the_metric_classifier():
    t = _fewshot_trial("a", 3, np.array([0.5, 0.25]))
    assert episode_accuracies([t], "val/acc_5w1s") == {(3, 0): 50.0, (3, 1): 25.0}
    assert episode_accuracies([t], "val/acc_5w1s_logreg") == {(3, 0): 0.0, (3, 1): 0.0}
    assert episode_accuracies([t], "val/acc_5w5s") == {}
    assert episode_accuracies([t], "val/top1") == {}


def _top1_trial(label: str, seed: int, top1: float, status: str = "finished") -> dict:
    return {"name": f"{label}-s{seed}", "label": label, "seed": seed, "params": {},
            "metrics": {"test/top1": top1, "test/n_images": 10000, "epoch": 1}, "status": status,
            "run_id": None, "paper": "76.1" * (label == "CE")}


def test_top1_table_pairs_per_seed_with_the_named_baseline(tmp_path):
    """Per-seed t-interval on top-1; the Study's `baseline` names the reference row; a row with
    fewer than 3 paired seeds says so instead of printing an interval; every top-1 cell of the
    per-trial table has the Wilson interval of that single run."""
    study = Study(name="t", base=ExperimentConfig(), metric="top1", baseline="CE",
                  rows=(Row("KD", {}), Row("CE", {}, "76.1"), Row("tie", {}), Row("few", {})),
                  columns=(("top-1", "top1"),))
    ce = [70.0, 71.0, 69.5]
    trials = [_top1_trial("CE", s, v) for s, v in enumerate(ce)]
    trials += [_top1_trial("KD", s, v + 5 + e) for s, (v, e) in enumerate(zip(ce, [0.3, -0.2, 0.1]))]
    trials += [_top1_trial("tie", s, v + e) for s, (v, e) in enumerate(zip(ce, [0.4, -0.5, 0.1]))]
    trials += [_top1_trial("few", 0, 90.0), _top1_trial("few", 1, 91.0),
               _top1_trial("few", 2, 99.0, status="error")]
    text = write_results_md(study, summarize_rows(study, trials), str(tmp_path / "t.md"),
                            header={})
    kd = _summary_line(text, "KD")
    # diffs 5.3, 4.8, 5.1: mean 5.0667, s = 0.2517, half = t2 * s / sqrt(3) = 0.6253
    # KD 75.3, 75.8, 74.6: mean 75.23, s = sqrt(0.7267 / 2) = 0.60
    assert kd == "| KD | 3 | 75.23 ± 0.60 | +5.07 [+4.44, +5.69] * (3 seeds) | – |"
    assert _summary_line(text, "CE") == "| CE | 3 | 70.17 ± 0.76 | baseline | 76.1 |"
    tie = _summary_line(text, "tie")  # diffs 0.4, -0.5, 0.1: mean 0
    assert "+0.00 [-" in tie and " * " not in tie
    assert _summary_line(text, "few") == "| few | 2 | 90.50 ± 0.71 | +20.00 (n too small: 2 seeds) | – |"
    # Wilson, p = 0.7, n = 10000, z = 1.96: center (0.7 + z^2/2n) / (1 + z^2/n) = 0.69992,
    # half z * sqrt(0.21/n + z^2/4n^2) / (1 + z^2/n) = 0.00898 -> [69.09, 70.89]
    assert "| CE | 0 | test | 70.00 [69.09, 70.89] |" in text and "Wilson interval" in text
    with pytest.raises(ConfigError, match="baseline"):
        Study(name="t", base=ExperimentConfig(), metric="top1", baseline="nope",
              rows=(Row("KD", {}),))


# ------------------------------------------- same data, init and episodes across rows at a seed

STUDY_SCRIPTS = ("cskd_ablation", "m2sd_ablation", "mkd_ablation", "smkd_ablation",
                 "sskd_ablation", "kd_sweep")


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.mark.parametrize("script", STUDY_SCRIPTS)
def test_rows_of_a_seed_differ_only_in_the_method(script):
    """Pairing rows per seed and per episode is sound only if, at a seed, every row trains on the
    same data order (data.*, train.*, seed) from the same initialisation seed and is scored on the
    same episodes (eval.*, eval.seed fixed across seeds too): rows may change only the method."""
    from helpers import load_study

    study = load_study(script).build("smoke")
    for seed in (0, 1):
        cfgs = [_flat(study.trial_config({"row": r.label, "seed": seed}).to_dict())
                for r in study.rows]
        assert {c["seed"] for c in cfgs} == {seed}
        for c in cfgs[1:]:
            differ = {k for k in cfgs[0].keys() | c.keys() if cfgs[0].get(k) != c.get(k)}
            assert all(k == "method" or k.startswith("method_cfg.") for k in differ), differ
    seeds = {study.trial_config({"row": study.rows[0].label, "seed": s}).eval.seed for s in (0, 7)}
    assert seeds == {study.base.eval.seed}


def test_smkd_rows_of_a_seed_start_from_the_same_student_weights():
    """The engine seeds (seed_all(cfg.seed)) right before building the method, so rows whose
    method builds the student first get bit-identical initial students at a seed."""
    import torch
    from helpers import load_study

    from kdray.engine.loop import seed_all
    from kdray.methods import build_method
    from kdray.methods.base import unwrap

    study = load_study("smkd_ablation").build("smoke")
    states = []
    for r in study.rows:
        cfg = study.trial_config({"row": r.label, "seed": 3})
        seed_all(cfg.seed)
        states.append(unwrap(build_method(cfg, 10).student).state_dict())
    for s in states[1:]:
        assert s.keys() == states[0].keys()
        assert all(torch.equal(s[k], states[0][k]) for k in s)
    seed_all(4)
    other = unwrap(build_method(study.trial_config({"row": study.rows[0].label, "seed": 4}),
                                10).student).state_dict()
    assert not all(torch.equal(other[k], states[0][k]) for k in other)  # the seed does matter


def test_a_study_without_rows_gets_no_delta_column(tmp_path):
    study = Study(name="g", base=ExperimentConfig(), metric="top1",
                  columns=(("top-1", "top1"),))
    trials = [_top1_trial("grid", s, 60.0 + s) for s in range(3)]
    text = write_results_md(study, summarize_rows(study, trials), str(tmp_path / "g.md"), header={})
    assert "| setting | n | top-1 | paper |\n|---|---|---|---|" in text
    assert "| grid | 3 | 61.00 ± 1.00 | – |" in text and "Δ" not in text


def test_claims_get_their_own_paired_delta_and_verdict(tmp_path):
    """`Study.claims` ("A > B") get Δ = A − B paired per seed with a verdict: KD > CE holds
    (+5.07, CI above 0), CE > KD is contradicted, tie > CE is not shown (CI spans 0);
    from_preset maps paper keys to labels and drops a pair whose row the preset lacks."""
    study = Study(name="t", base=ExperimentConfig(), metric="top1",
                  rows=(Row("CE", {}), Row("KD", {}), Row("tie", {})),
                  columns=(("top-1", "top1"),),
                  claims=(("KD", "CE"), ("CE", "KD"), ("tie", "CE")))
    ce = [70.0, 71.0, 69.5]
    trials = [_top1_trial("CE", s, v) for s, v in enumerate(ce)]
    trials += [_top1_trial("KD", s, v + 5 + e) for s, (v, e) in enumerate(zip(ce, [0.3, -0.2, 0.1]))]
    trials += [_top1_trial("tie", s, v + e) for s, (v, e) in enumerate(zip(ce, [0.4, -0.5, 0.1]))]
    text = write_results_md(study, summarize_rows(study, trials), str(tmp_path / "t.md"),
                            header={})
    claims = text.split("The paper's claims")[1].splitlines()
    assert "| KD > CE | +5.07 [+4.44, +5.69] * (3 seeds) | holds |" in claims
    assert "| CE > KD | -5.07 [-5.69, -4.44] * (3 seeds) | contradicted |" in claims
    assert any(x.startswith("| tie > CE | +0.00 [-") and x.endswith("| not shown |")
               for x in claims)
    with pytest.raises(ConfigError, match="claims"):
        Study(name="t", base=ExperimentConfig(), metric="top1", rows=(Row("KD", {}),),
              claims=(("KD", "nope"),))
    from kdray.search import Budget

    built = Study.from_preset("x", "mini", method="ce", overrides={}, metric="top1",
                              rows=(("CE only", "ce", {}), ("KD", "kd", {})), columns=(),
                              space={}, budget=Budget(1, 1, 2),
                              claims=(("kd", "ce"), ("sskd", "kd")))
    assert built.claims == (("KD", "CE only"),)
