"""diagnostics/paired_rows.py and pooled_seeds.py: which trials they read from a results file, the
pooled Δ against a hand-computed t-interval, and their clear refusals."""

from __future__ import annotations

import importlib.util

from helpers import REPO

TABLE = """| setting | seed | split | 5w1s | 20w1s | health | paper | epochs | status | MLflow run |
|---|---|---|---|---|---|---|---|---|---|
| phase 1 only | 0 | test | 41.65 ± 1.10 | 16.99 ± 0.36 | ok | – | 2 | finished | `aaa` |
| phase 1 only | 1 | test | 41.58 ± 1.10 | 17.09 ± 0.38 | ok | – | 2 | finished | `bbb` |
| full | 0 | test | 30.80 ± 0.91 | 11.89 ± 0.30 | ok | – | 2 | finished | `ccc` |
| full | 1 | test | – | – | – | – | 1 | failed | `ddd` |

| setting | n | 5w1s | 20w1s | health | Δ 20w1s [95% CI] | paper |
|---|---|---|---|---|---|---|
| full | 1 | 30.80 | 11.89 | ok | baseline | – |
"""


def _module(name: str = "paired_rows"):
    spec = importlib.util.spec_from_file_location(name, REPO / "diagnostics" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reads_the_finished_trials_of_each_setting(tmp_path):
    path = tmp_path / "t.md"
    path.write_text(TABLE)
    assert _module().trial_runs(str(path)) == {"phase 1 only": [(0, "aaa"), (1, "bbb")],
                                               "full": [(0, "ccc")]}


def test_an_unknown_setting_is_refused_before_the_store_is_opened(tmp_path, capsys):
    path = tmp_path / "t.md"
    path.write_text(TABLE)
    rc = _module().main([str(path), "sqlite:///nowhere/x.db", "test/acc_20w1s", "full", "CE"])
    assert rc == 2
    assert "no finished trials for ['CE']" in capsys.readouterr().err


def _top1_table(rows: list[tuple[str, int, str, str]]) -> str:
    lines = ["| setting | seed | split | top-1 | top-5 | status | MLflow run |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {seed} | test | {v} | 90.00 | {status} | `r{seed}` |"
              for n, seed, v, status in rows]
    return "intro\n\n" + "\n".join(lines) + "\n\n| setting | n | top-1 |\n|---|---|---|\n| A | 9 | 1.00 |\n"


def test_pooled_seeds_equals_the_hand_computed_interval(tmp_path, capsys):
    one, two = tmp_path / "one.md", tmp_path / "two.md"
    one.write_text(_top1_table([("A", 0, "10.00 [9.1, 10.9]", "finished"),
                                ("A", 1, "12.00 [11.1, 12.9]", "finished"),
                                ("B", 0, "9.00 [8.1, 9.9]", "finished"),
                                ("B", 1, "9.50 [8.6, 10.4]", "finished"),
                                ("B", 5, "–", "failed")]))
    two.write_text(_top1_table([("A", 2, "11.00 [10.1, 11.9]", "finished"),
                                ("B", 2, "10.00 [9.1, 10.9]", "finished")]))
    mod = _module("pooled_seeds")
    assert mod.per_seed(str(one), "top-1") == {"A": {0: 10.0, 1: 12.0}, "B": {0: 9.0, 1: 9.5}}
    assert mod.main(["top-1", "A", "B", str(one), str(two)]) == 0
    # diffs 1.0, 2.5, 1.0: mean 1.5, s = sqrt(0.75), t_{0.975, 2} = 4.302653 -> half 2.1513
    assert capsys.readouterr().out.splitlines()[-1] == \
        "pooled, seeds [0, 1, 2]: A − B: +1.50 [-0.65, +3.65] (3 seeds)"


def test_pooled_seeds_refuses_a_seed_in_two_tables_and_an_unknown_column(tmp_path, capsys):
    one = tmp_path / "one.md"
    one.write_text(_top1_table([("A", 0, "10.00", "finished"), ("B", 0, "9.00", "finished")]))
    mod = _module("pooled_seeds")
    assert mod.main(["top-1", "A", "B", str(one), str(one)]) == 2
    assert "seeds [0] of 'A' are in an earlier table too" in capsys.readouterr().err
    assert mod.main(["top1", "A", "B", str(one)]) == 2
    assert "no column 'top1'" in capsys.readouterr().err
