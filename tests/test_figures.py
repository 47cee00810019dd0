"""The ablation chart: the PNG exists with the expected size, and the data behind it is the
results table's (means, paired-Δ error bars, baseline, paper markers, val rows marked)."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from kdray.config import ExperimentConfig
from kdray.study import Row, Study
from kdray.study.figures import (
    ablation_data,
    paper_scatter_data,
    paper_values,
    plot_ablation,
    plot_paper_scatter,
    plot_sessions,
)
from kdray.study.spec import BEST_LABEL


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _rows():
    def trial(label, accs, split="test", paper="", params=None):
        eps = [{"way": 5, "shot": 1, "classifier": "proto", "episode_id": i, "accuracy": a}
               for i, a in enumerate(accs)]
        mean = 100 * sum(accs) / len(accs)
        return {"label": label, "seed": 0, "split": split, "params": params or {},
                "status": "finished", "paper": paper, "episodes": eps, "classifiers": ["proto"],
                "metrics": {"acc_5w1s": mean, "acc_5w1s_ci95": 1.0, "acc_5w5s": mean + 5}}
    return [trial("base", [0.2, 0.3, 0.4, 0.3]),
            trial("+ x", [0.3, 0.4, 0.4, 0.5], paper="35.0 / 45.0"),
            trial("search", [0.6] * 4, split="val", params={"w": 1.0}),  # not drawn
            trial(BEST_LABEL, [0.3, 0.3, 0.5, 0.4], params={"w": 1.0})]


def _study():
    return Study(name="s_smoke", base=ExperimentConfig(method="ce"), metric="acc_5w1s",
                 rows=(Row("base"), Row("+ x")),
                 columns=(("5w1s", "acc_5w1s"), ("5w5s", "acc_5w5s")))


def test_data_behind_the_chart():
    assert paper_values("74.28 / 86.99", 2) == [74.28, 86.99]
    assert paper_values("74.28", 2) == [None, None]
    assert paper_values("IN-1k Ti 72.2", 1) == [None]  # another setting: no marker
    assert paper_values("C100 resnet56->resnet20 69.63", 1) == [None]
    data = ablation_data(_study(), _rows())
    assert data["settings"] == ["base", "+ x", BEST_LABEL] and data["baseline"] == "base"
    c1 = data["columns"][0]
    assert c1["means"] == pytest.approx([30.0, 40.0, 37.5])
    assert c1["baseline_mean"] == pytest.approx(30.0) and c1["paper"] == [None, 35.0, None]
    assert c1["errors"][0] == (1.0, 1.0)  # the baseline: its own CI
    lo, hi = c1["errors"][1]  # paired Δ over 4 episodes: +10 points, its t-interval
    assert lo > 0 and hi > 0 and lo == pytest.approx(hi)
    assert data["other_split"] == [False, False, False]
    assert data["unit"] == "%"   # accuracies; COCO box AP is a fraction and says so
    coco = replace(_study(), base=ExperimentConfig(method="mkd").override({"eval.kind": "coco"}))
    assert ablation_data(coco, _rows())["unit"] == "in [0, 1]"
    ap = [{**r, "metrics": {"acc_5w1s": r["metrics"]["acc_5w1s"] / 100},
           "paper": "35.0" if r["paper"] else ""} for r in _rows()]
    coco = replace(coco, columns=(("AP", "acc_5w1s"),))
    assert [d["ours"] for d in paper_scatter_data(coco, ap)] == pytest.approx([40.0])  # in %


def test_chart_png(tmp_path):
    path = tmp_path / "s_smoke_ablation.png"
    plot_ablation(_study(), _rows(), path)
    w, h = _png_size(path)
    assert (w, h) == (1160, 295)


def test_paper_scatter_only_where_the_setting_matches(tmp_path):
    """One point per (setting, column) whose paper cell is bare numbers: `+ x` has 35.0 / 45.0
    for 5w1s / 5w5s; ours are its means (40, 45). No matching cell: no file."""
    path = tmp_path / "paper.png"
    data = plot_paper_scatter(_study(), _rows(), path)
    assert data == [{"setting": "+ x", "column": "5w1s", "paper": 35.0, "ours": pytest.approx(40.0)},
                    {"setting": "+ x", "column": "5w5s", "paper": 45.0, "ours": pytest.approx(45.0)}]
    assert _png_size(path) == (550, 500)
    rows = [dict(r, paper="IN-1k 72.2 / 80.0") for r in _rows()]
    assert plot_paper_scatter(_study(), rows, tmp_path / "none.png") == []
    assert not (tmp_path / "none.png").exists()


def test_fscil_sessions_on_one_plot(tmp_path):
    """Each setting's mean accuracy per session (S0..S2), from the session columns."""
    study = Study(name="f_smoke", base=ExperimentConfig(method="ce"), metric="fscil_avg",
                  rows=(Row("base"), Row("full")),
                  columns=(("S0", "fscil_s0"), ("S1", "fscil_s1"), ("S2", "fscil_s2"),
                           ("Avg", "fscil_avg")))

    def trial(label, seed, accs):
        return {"label": label, "seed": seed, "split": "test", "params": {}, "status": "finished",
                "paper": "", "metrics": {f"fscil_s{t}": a for t, a in enumerate(accs)}}
    rows = [trial("base", 0, [70, 60, 50]), trial("base", 1, [72, 62, 52]),
            trial("full", 0, [71, 65, 58])]
    path = tmp_path / "sessions.png"
    data = plot_sessions(study, rows, path)
    assert data["sessions"] == [0, 1, 2]
    assert data["settings"] == {"base": [71.0, 61.0, 51.0], "full": [71.0, 65.0, 58.0]}
    assert _png_size(path) == (700, 420)
    assert plot_sessions(_study(), _rows(), tmp_path / "no.png")["settings"] == {}
    assert not (tmp_path / "no.png").exists()
