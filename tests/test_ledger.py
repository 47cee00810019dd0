"""The reproduction ledger: the paper-cell data file, the status rules, and `kdray ledger` on a
temporary MLflow store (deterministic output, a `not run` cell with its FLOP estimate)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from kdray.ledger.cells import Cell, load_cells, preset_rows
from kdray.ledger.render import build_lines, metric_value, status_of

CELLS = load_cells()


def _cell(cell_id: str) -> Cell:
    return next(c for c in CELLS if c.id == cell_id)


def test_cells_parse_and_name_existing_presets_and_rows():
    assert len(CELLS) >= 70 and len({c.id for c in CELLS}) == len(CELLS)
    pending = set()
    for c in CELLS:
        assert c.metric and not c.metric.startswith(("val/", "test/")), c.id
        assert c.value is None or 0 < c.value < 100, c.id
        assert {"dataset", "protocol"} <= set(c.setting), c.id
        found = preset_rows(c)
        if found is None:
            pending.add(c.preset_module)
            continue
        preset, labels = found
        assert set(c.rows) <= set(labels), (c.id, c.rows)
        assert preset.get("data.dataset") == c.match["data.dataset"], c.id
    # the DKD preset module is being added by the integrator; nothing else may be missing
    assert pending <= {"kdray.presets.dkd"}


def test_dkd_cells_match_the_dkd_presets():
    mod = pytest.importorskip("kdray.presets.dkd")
    cells = [c for c in CELLS if c.method == "dkd"]
    assert len(cells) == 12
    labels = [label for label, *_ in mod.ROWS]
    for c in cells:
        assert c.preset in mod.PRESETS and set(c.rows) <= set(labels), c.id


def test_every_preset_paper_key_has_a_cell():
    """Each row a preset marks with a paper key (SMKD/CSKD/MKD/SSKD/M2SD) is aimed at by a cell."""
    targeted = {(c.study, r) for c in CELLS for r in c.rows}
    for study in ("smkd", "sskd", "cskd", "m2sd", "mkd"):
        mod = importlib.import_module(f"kdray.presets.{study}")
        for label, key, _ in mod.ROWS:
            if key:
                assert (f"{study}_ablation", label) in targeted, (study, label)


def test_cells_agree_with_the_presets_paper_columns():
    """The numbers in the data file are the ones the study tables print beside ours."""
    import re

    from kdray.presets import cskd, mkd, smkd, sskd

    def nums(text: str) -> list[float]:
        return [float(x) for x in re.findall(r"\d+\.\d+", text)]

    checked = 0
    for c in CELLS:
        if c.method == "sskd":
            t, s = c.match["model.teacher_arch"], c.match["model.arch"]
            key = c.id.rsplit("/", 1)[1]
            expected = float(sskd.paper_number(key, t, s, c.preset))
        elif c.method == "cskd":
            expected = float(cskd.paper_number(c.id.rsplit("/", 1)[1], c.preset))
        elif c.method == "smkd":
            key, shot = c.id.split("/")[2:]
            values = nums(smkd.paper_number(key, c.preset))
            expected = values[0] if shot == "1shot" else values[-1 if key == "ibot" else 2]
            if c.pm is not None:
                assert c.pm == values[1 if shot == "1shot" else 3], c.id
        elif c.method == "mkd":
            expected = nums(mkd.paper_number(c.id.split("/")[2], c.preset))[0]
        else:
            continue
        assert c.value == expected, (c.id, c.value, expected)
        checked += 1
    assert checked == 12 + 36 + 9 + 5


def test_every_cell_renders_as_not_run_without_runs():
    from kdray.ledger.markdown import render_md
    from kdray.ledger.render import render_csv

    lines = build_lines(CELLS, [])
    md, csv = render_md(lines), render_csv(lines)
    assert len(lines) == sum(len(c.rows) for c in CELLS) == len(csv.splitlines()) - 1
    assert all(f"| {c.id} |" in md for c in CELLS) and f"{len(lines)} not run" in md
    assert render_md(build_lines(list(reversed(CELLS)), [])) == md   # sorted, whatever the order


def test_status_rules():
    assert status_of(80.08, 0.18, 80.0, True) == "within"
    assert status_of(80.08, 0.18, 79.8, True) == "gap"
    assert status_of(74.92, None, 74.5, True) == "within"      # ±0.5 pt without a std/CI
    assert status_of(74.92, None, 74.3, True) == "gap"
    assert status_of(74.92, None, 74.92, False) == "other setting"
    assert status_of(None, None, 60.0, True) == "no paper value"
    assert status_of(74.92, None, None, True) == "not run"
    assert metric_value({"val/top1": 1.0, "test/top1": 2.0}, "top1") == 2.0
    assert metric_value({"val/top1": 1.0}, "top1") == 1.0
    assert metric_value({"val/top5": 1.0}, "top1") is None


def _run(study, row, seed, value, params, key="test/top1", start=0, rid=None):
    return {"run_id": rid or f"{study}-{row}-{seed}-{start}", "study": study, "row": row,
            "seed": str(seed), "metrics": {key: value}, "params": params, "commit": "abc",
            "wall_s": 3600.0, "devices": {"kind": "CPU", "count": 2, "name": ""},
            "start_time": start}


def test_lines_per_tier_against_hand_made_runs():
    cell = _cell("sskd/cifar100/wrn_40_2-wrn_16_2/kd")   # 74.92, no std given
    pair = {"data.dataset": "cifar100", "model.teacher_arch": "wrn_40_2", "model.arch": "wrn_16_2"}
    smoke = {"data.dataset": "cifar10", "model.teacher_arch": "conv4", "model.arch": "conv2"}
    # smoke only: another dataset, never compared
    lines = build_lines([cell], [_run("sskd_ablation_smoke", "KD", 0, 30.0, smoke)])
    assert lines[0].status == "other setting" and lines[0].delta is None
    # the paper preset ran: seeds 0/1 (seed 0 twice: the newer run counts), another pair ignored
    runs = [_run("sskd_ablation_smoke", "KD", 0, 30.0, smoke),
            _run("sskd_ablation_cifar100", "KD", 0, 70.0, pair, key="val/top1", start=1),
            _run("sskd_ablation_cifar100", "KD", 0, 74.8, pair, start=2),
            _run("sskd_ablation_cifar100", "KD", 1, 75.0, pair, start=3),
            _run("sskd_ablation_cifar100", "KD", 2, 10.0, {**pair, "model.arch": "wrn_40_1"}),
            _run("sskd_ablation_cifar100", "SSKD full (ratio_ss=0.75)", 0, 10.0, pair)]
    (ln,) = build_lines([cell], runs)
    res = ln.tiers["cifar100"]
    assert ln.compared == "cifar100" and res.n == 2 and res.values == [74.8, 75.0]
    assert ln.status == "within" and ln.delta == pytest.approx(74.9 - 74.92)
    assert ln.tiers["smoke"].same_setting is False
    runs[3]["metrics"] = {"test/top1": 72.0}
    assert build_lines([cell], runs)[0].status == "gap"
    # nothing ran: `not run`, with the estimate asked for
    (ln,) = build_lines([cell], [], estimate=lambda c: None)
    assert ln.status == "not run" and not ln.tiers


def test_a_rebuild_from_one_tier_keeps_the_other_tiers_of_the_previous_csv():
    """Only the smoke study ran again: the line is rebuilt from it, and its mini and paper-preset
    tiers, which the previous ledger.csv had from runs no longer read, are kept with their
    compute and marked [carried]; the status is about the fullest tier, the carried preset."""
    import csv
    import io

    from kdray.ledger.carry import carry, tier_compute
    from kdray.ledger.markdown import render_md
    from kdray.ledger.render import CarriedTier, render_csv

    cell = _cell("sskd/cifar100/wrn_40_2-wrn_16_2/kd")   # 74.92, no std given
    smoke = {"data.dataset": "cifar10", "model.teacher_arch": "conv4", "model.arch": "conv2"}
    runs = [_run("sskd_ablation_smoke", "KD", 0, 31.0, smoke)]
    old = {"mini_mean": "46.0567", "mini_std": "0.6", "mini_n": "3", "preset_mean": "74.9",
           "preset_std": "0.1414", "preset_n": "2", "smoke_mean": "30.0", "smoke_n": "1",
           "compared_tier": "cifar100", "status": "within", "delta": "-0.02",
           "compute": "smoke: 0.01 CPU-core-h; mini: 0.5 CPU-core-h; cifar100: 4 GPU-h (A100); "
                      "0.5 CPU-core-h"}
    (ln,) = carry(build_lines([cell], runs, estimate=lambda c: "est"), runs,
                  {(cell.id, "KD"): old})
    assert ln.carried is None and ln.tiers["smoke"].values == [31.0]   # rebuilt from the run
    mini, own = ln.tiers["mini"], ln.tiers["cifar100"]
    assert isinstance(mini, CarriedTier) and (mini.mean, mini.std, mini.n) == (46.0567, 0.6, 3)
    assert (own.mean, own.n) == (74.9, 2) and ln.estimate is None
    assert ln.compared == "cifar100" and ln.status == "within"
    assert ln.delta == pytest.approx(74.9 - 74.92)
    row = next(csv.DictReader(io.StringIO(render_csv([ln]))))
    assert (row["smoke_mean"], row["mini_mean"], row["mini_n"]) == ("31.0000", "46.0567", "3")
    assert row["compute"] == ("smoke: 2 CPU-core-h; mini: 0.5 CPU-core-h [carried]; cifar100: "
                              "4 GPU-h (A100); 0.5 CPU-core-h [carried]")
    assert row["mlflow_run_ids"] == runs[0]["run_id"]      # a carried tier's runs are not listed
    md = render_md([ln])
    assert "46.06 ± 0.60 (n=3) [carried]" in md and "cifar100: 74.90 ± 0.14 (n=2) [carried]" in md
    assert "0 lines and 2 tiers of rebuilt lines kept" in md
    # a tier whose study ran now is never carried, even when this row has no run in it
    (ln,) = carry(build_lines([cell], runs + [_run("sskd_ablation_mini", "CE only", 0, 1.0,
                                                   smoke)]), runs, {(cell.id, "KD"): old})
    assert "mini" in ln.tiers   # `runs` (what carry is told ran) has no mini run: carried
    (ln,) = carry(build_lines([cell], runs), runs + [_run("sskd_ablation_mini", "CE only", 0,
                                                          1.0, smoke)], {(cell.id, "KD"): old})
    assert "mini" not in ln.tiers and ln.compared == "cifar100"
    assert tier_compute("smoke: 1 CPU-core-h; 2 GPU-h (x)", "smoke", ["smoke"]) == (
        "1 CPU-core-h; 2 GPU-h (x)")
    # carrying a carried tier again gives the same line (a rebuild is idempotent)
    again = {(cell.id, "KD"): next(csv.DictReader(io.StringIO(render_csv(carry(
        build_lines([cell], runs), runs, {(cell.id, "KD"): old})))))}
    (ln2,) = carry(build_lines([cell], runs), runs, again)
    assert render_csv([ln2]) == render_csv(carry(build_lines([cell], runs), runs,
                                                 {(cell.id, "KD"): old}))


# ---------------------------------------------------------------- kdray ledger on a real store
def _store(tmp_path: Path) -> str:
    from mlflow.tracking import MlflowClient

    from kdray.runtime.mlflow_store import get_or_create_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    pair = {"data.dataset": "cifar100", "model.teacher_arch": "wrn_40_2", "model.arch": "wrn_16_2",
            "resources.num_workers": "1", "resources.gpus_per_worker": "1",
            "resources.cpus_per_worker": "4"}
    smoke = {"data.dataset": "cifar10", "model.teacher_arch": "conv4", "model.arch": "conv2",
             "resources.num_workers": "1", "resources.gpus_per_worker": "0",
             "resources.cpus_per_worker": "1"}
    studies = {"sskd_ablation_smoke": (smoke, [("KD", 0, 31.5), ("KD", 1, 33.0)], False),
               "sskd_ablation_cifar100": (pair, [("KD", 0, 74.7), ("KD", 1, 75.1)], True)}
    for study, (params, trials, gpu) in studies.items():
        exp = get_or_create_experiment(client, study)
        parent = client.create_run(exp, tags={"kdray.role": "study", "kdray.study": study},
                                   run_name=study).info.run_id
        for i, (row, seed, value) in enumerate(trials):
            tags = {"kdray.role": "trial", "mlflow.parentRunId": parent,
                    "kdray.run_key": f"{study}/grid/abc_{i:05d}",
                    "mlflow.source.git.commit": "0123456789abcdef"}
            rid = client.create_run(exp, tags=tags,
                                    run_name=f"{row}-t{i:03d}-s{seed}").info.run_id
            for k, v in {**params, "seed": str(seed)}.items():
                client.log_param(rid, k, v)
            client.log_metric(rid, "val/top1" if i else "test/top1", value, step=2)
            if gpu:
                client.log_dict(rid, {"world_size": 1, "cuda_devices": ["NVIDIA H200"]},
                                "environment.json")
            client.set_terminated(rid, "FINISHED")
        # a searched trial is not a row result
        tags = {"kdray.role": "trial", "mlflow.parentRunId": parent,
                "kdray.run_key": f"{study}/search/xyz"}
        rid = client.create_run(exp, tags=tags, run_name="KD-t000").info.run_id
        client.log_metric(rid, "val/top1", 99.0)
        client.set_terminated(rid, "FINISHED")
        client.set_terminated(parent, "FINISHED")
    return uri


def test_kdray_ledger_is_deterministic_and_estimates_cells_not_run(tmp_path, monkeypatch):
    import kdray.runtime.ledger as runtime_ledger
    from kdray.cli import main

    cells = [_cell("sskd/cifar100/wrn_40_2-wrn_16_2/kd"), _cell("sskd/cifar100/resnet56-resnet20/kd"),
             _cell("m2sd/cifar100/cec/avg")]
    monkeypatch.setattr(runtime_ledger, "load_cells", lambda: cells)
    uri, out = _store(tmp_path), tmp_path / "results"
    assert main(["ledger", "--tracking-uri", uri, "--out", str(out)]) == 0
    md, csv = (out / "LEDGER.md").read_bytes(), (out / "ledger.csv").read_bytes()
    (out / "LEDGER.md").unlink()
    (out / "ledger.csv").unlink()
    assert main(["ledger", "--tracking-uri", uri, "--out", str(out)]) == 0
    assert (out / "LEDGER.md").read_bytes() == md and (out / "ledger.csv").read_bytes() == csv

    text = md.decode()
    assert '<a id="sskd_ablation_cifar100"></a>' in text
    line = next(x for x in text.splitlines() if x.startswith("| sskd/cifar100/wrn_40_2-wrn_16_2/kd"))
    assert "74.90 ± 0.28 (n=2)" in line and "within (cifar100)" in line and "-0.02" in line
    assert "31.5" not in line and "32.25 ± 1.06 (n=2) [other setting]" in line
    assert "GPU-h (NVIDIA H200)" in line and "CPU-core-h" in line and "0123456789" in line
    assert "99" not in line.split("|")[6]
    other = next(x for x in text.splitlines() if x.startswith("| sskd/cifar100/resnet56-resnet20"))
    assert "other setting (smoke)" in other and "est. " in other and "A100-h/seed" in other
    not_run = next(x for x in text.splitlines() if x.startswith("| m2sd/cifar100/cec/avg"))
    assert "| not run |" in not_run and "est. " in not_run and "A100-h/seed" in not_run
    assert "59.53" in not_run and "CEC" in not_run
    rows = csv.decode().splitlines()
    assert rows[0].startswith("cell,method,paper") and len(rows) == 4
    assert "estimate_gpu_hours" in rows[0]
    assert "A100 at 40% of 312 TFLOP/s bf16" in text


def test_kdray_ledger_merges_several_stores_and_counts_a_run_once(tmp_path, monkeypatch):
    """`--tracking-uri` repeated: the runs of every store make one ledger (per seed the newest
    finished run of all stores, as within one store); the same store given twice changes
    nothing (runs are keyed by id)."""
    import kdray.runtime.ledger as runtime_ledger
    from kdray.cli import main

    monkeypatch.setattr(runtime_ledger, "load_cells",
                        lambda: [_cell("sskd/cifar100/wrn_40_2-wrn_16_2/kd")])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")

    def line(*uris: str) -> str:
        out = tmp_path / f"out{len(uris)}{uris[-1][-12:-9]}"
        args = [x for u in uris for x in ("--tracking-uri", u)]
        assert main(["ledger", *args, "--out", str(out)]) == 0
        text = (out / "LEDGER.md").read_text()
        return next(x for x in text.splitlines() if x.startswith("| sskd/cifar100/wrn_40_2"))

    alone = line(a)
    assert "74.90 ± 0.28 (n=2)" in alone
    assert line(a, a) == alone
    merged = line(a, b)   # b's runs are newer: they are each seed's run now
    assert merged == line(b) != alone and "74.90 ± 0.28 (n=2)" in merged


def test_ledger_help_and_study_tables_link_their_ledger_lines(tmp_path, capsys, monkeypatch):
    from kdray.cli import main
    from kdray.config import ExperimentConfig
    from kdray.study import Row, Study
    from kdray.study.table import write_results_md

    with pytest.raises(SystemExit) as e:
        main(["ledger", "--help"])
    assert e.value.code == 0 and "--tracking-uri" in capsys.readouterr().out
    study = Study(name="sskd_ablation_smoke", base=ExperimentConfig(), metric="top1",
                  rows=(Row("KD", {}),))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "replication").mkdir(parents=True)
    text = write_results_md(study, [], "results/s.md", header={})
    assert "- ledger: [results/LEDGER.md#sskd_ablation_smoke](LEDGER.md#sskd_ablation_smoke)" in text
    # a table written with another --results-dir links the same ledger, relative to itself
    text = write_results_md(study, [], "results/replication/s.md", header={})
    assert "(../LEDGER.md#sskd_ablation_smoke)" in text
    text = write_results_md(study, [], str(tmp_path / "s.md"), header={}, ledger_dir="results")
    assert "(results/LEDGER.md#sskd_ablation_smoke)" in text


def test_a_rebuild_keeps_the_runs_and_lines_of_stores_no_longer_given(tmp_path, monkeypatch):
    """The runs read once are kept in ledger_runs.jsonl: a rebuild from another (here empty)
    store gives the same line from them. A line of a ledger written before that file existed
    is carried as the old ledger.csv had it, marked [carried]; a study with runs is rebuilt."""
    import csv
    import io

    import kdray.runtime.ledger as runtime_ledger
    from kdray.cli import main
    from kdray.ledger.carry import RUNS_FILE, slim

    cells = [_cell("sskd/cifar100/wrn_40_2-wrn_16_2/kd"), _cell("m2sd/cifar100/cec/avg")]
    monkeypatch.setattr(runtime_ledger, "load_cells", lambda: cells)
    (tmp_path / "a").mkdir()
    (tmp_path / "empty").mkdir()
    a, empty = _store(tmp_path / "a"), f"sqlite:///{tmp_path / 'empty' / 'mlflow.db'}"
    out = tmp_path / "results"

    def line(prefix: str) -> str:
        text = (out / "LEDGER.md").read_text()
        return next(x for x in text.splitlines() if x.startswith(f"| {prefix}"))

    assert main(["ledger", "--tracking-uri", a, "--out", str(out)]) == 0
    first, first_csv = line("sskd/cifar100/wrn_40_2"), (out / "ledger.csv").read_text()
    assert "74.90 ± 0.28 (n=2)" in first and (out / RUNS_FILE).is_file()
    assert main(["ledger", "--tracking-uri", empty, "--out", str(out)]) == 0
    assert line("sskd/cifar100/wrn_40_2") == first and (out / "ledger.csv").read_text() == first_csv
    assert "4 earlier runs from ledger_runs.jsonl" in (out / "LEDGER.md").read_text()

    # a ledger from before the runs file: its m2sd line ran in a store not given now
    (out / RUNS_FILE).unlink()
    rows = list(csv.DictReader(io.StringIO(first_csv)))
    m2sd = next(r for r in rows if r["cell"] == "m2sd/cifar100/cec/avg")
    m2sd.update({"mini_mean": "57.5667", "mini_std": "0.0306", "mini_n": "3",
                 "compared_tier": "mini", "status": "other setting", "commits": "fe9aa8b",
                 "compute": "mini: 0.2 CPU-core-h", "mlflow_run_ids": "c35d1444ae42;66da71df8b9d"})
    sskd = next(r for r in rows if r["cell"].startswith("sskd/"))
    sskd["mini_mean"] = "1.0"  # its study has runs in store a: rebuilt, not carried
    with open(out / "ledger.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    assert main(["ledger", "--tracking-uri", a, "--out", str(out)]) == 0
    again = {r["cell"]: r for r in csv.DictReader(open(out / "ledger.csv"))}
    assert again["m2sd/cifar100/cec/avg"] == m2sd
    assert again["sskd/cifar100/wrn_40_2-wrn_16_2/kd"]["mini_mean"] == ""
    carried = line("m2sd/cifar100/cec/avg")
    assert "57.57 ± 0.03 (n=3)" in carried and "other setting (mini) [carried]" in carried
    assert "`c35d1444`, `66da71df`" in carried and "fe9aa8b" in carried
    text = (out / "LEDGER.md").read_text()
    assert "[carried]: 1 lines and 0 tiers of rebuilt lines kept" in text and "1 other setting" in text
    assert line("sskd/cifar100/wrn_40_2") == first

    # only the metrics a ledger reads are kept
    assert slim({"metrics": {"test/top1": 1.0, "train/loss": 2.0, "epoch": 3}})["metrics"] == {
        "test/top1": 1.0, "epoch": 3}
