"""diagnostics/paired_rows.py: which trials it reads from a results file, and its clear refusal."""

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


def _module():
    spec = importlib.util.spec_from_file_location("paired_rows",
                                                  REPO / "diagnostics" / "paired_rows.py")
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
