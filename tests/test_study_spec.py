"""Search ranges are written once (method Config.SEARCH): presets select and may narrow them;
`Study.from_preset` builds the same Study the study scripts built by hand. No Ray."""

from __future__ import annotations

import pytest
from helpers import load_study

from kdray.config import ExperimentConfig
from kdray.methods import METHODS
from kdray.presets import method_space
from kdray.search import Budget, Choice, Float, Int, inside, select
from kdray.study import Row, Study

_M = "method_cfg."
RANGES = {"w": Float(0.1, 10.0, log=True), "t": Float(1.0, 8.0), "k": Int(1, 4),
          "s": Choice(["a", "b", "c"])}


def test_select_keeps_order_and_prefix_and_accepts_ranges_inside():
    space = select(RANGES, ("t", "w", "s"), prefix=_M,
                   narrowed={"t": Float(2.0, 4.0), "s": Choice(["c", "a"])})
    assert list(space) == [_M + "t", _M + "w", _M + "s"]
    assert space[_M + "t"] == Float(2.0, 4.0) and space[_M + "w"] == RANGES["w"]
    assert space[_M + "s"] == Choice(["c", "a"])
    assert select(RANGES, ("k",), narrowed={"k": Int(1, 4)}) == {"k": Int(1, 4)}  # equal: inside


@pytest.mark.parametrize("narrowed", [
    {"t": Float(0.5, 4.0)},              # below the Config range
    {"t": Float(2.0, 9.0)},              # above it
    {"w": Float(0.1, 1.0)},              # log range narrowed to a uniform one
    {"k": Float(1.0, 2.0)},              # another kind of range
    {"s": Choice(["a", "z"])},           # a value the Config does not allow
])
def test_select_rejects_a_narrowed_range_outside_the_config_range(narrowed):
    with pytest.raises(ValueError, match="is not inside"):
        select(RANGES, RANGES, narrowed=narrowed)


def test_select_rejects_unknown_and_unselected_keys():
    with pytest.raises(ValueError, match="no range"):
        select(RANGES, ("t", "tau"))
    with pytest.raises(ValueError, match="not selected"):
        select(RANGES, ("t",), narrowed={"w": Float(1.0, 2.0)})
    assert inside(Int(2, 3), Int(1, 4)) and not inside(Int(0, 3), Int(1, 4))


def test_budget_is_validated():
    assert Budget(4, 1) == Budget(samples=4, grace=1, reduction_factor=2)
    for bad in ((0, 1, 2), (4, 0, 2), (4, 1, 1)):
        with pytest.raises(ValueError, match="budget"):
            Budget(*bad)


def test_method_space_reads_the_registry():
    assert method_space("kd", ("w_kd", "tau")) == {
        _M + "w_kd": METHODS["kd"].Config.SEARCH["w_kd"], _M + "tau": Float(1.0, 8.0)}
    with pytest.raises(ValueError, match="not inside"):
        method_space("kd", ("tau",), narrowed={"tau": Float(0.5, 2.0)})


# The spaces and budgets the presets wrote out before the ranges moved to Config.SEARCH alone.
OLD_SPACES = {
    "cskd": {_M + "w_cskd": Float(0.5, 2.0), _M + "w_distill": Float(0.25, 0.75),
             _M + "alpha_schedule": Choice(["linear", "x2", "cos"]),
             _M + "alpha_end": Float(0.0, 0.5)},
    "m2sd": {_M + "alpha": Choice([0.2, 0.5, 1.0]), _M + "w_mix": Float(0.1, 10.0, log=True),
             _M + "w_kl": Float(0.1, 10.0, log=True), _M + "w_sd": Float(0.1, 10.0, log=True),
             _M + "w_at": Float(0.1, 10.0, log=True)},
    "mkd": {_M + "w_feat": Float(0.1, 10.0, log=True), _M + "w_global": Float(1e-7, 1e-4, log=True),
            _M + "mask_ratio": Choice([0.25, 0.5, 0.65, 0.75]),
            _M + "decoder_depth": Choice([1, 2, 4])},
    "smkd": {_M + "w_patch": Float(0.0, 2.0), _M + "teacher_temp": Float(0.04, 0.07),
             "data.mask_ratio": Choice(["0.05,0.25", "0.1,0.5", "0.25,0.65"])},  # eval.split:
    # no longer searched: every searched trial evaluates on val (Study.search_base)
    "sskd": {_M + "w_ss": Float(1.0, 20.0), _M + "w_tf": Float(0.5, 5.0),
             _M + "tau_ss": Float(0.1, 1.0), _M + "ratio_ss": Choice([0.0, 0.25, 0.5, 0.75, 1.0])},
    "kd": {_M + "tau": Float(1.0, 8.0), _M + "w_kd": Float(0.1, 2.0)},
}
OLD_BUDGETS = {
    "cskd": {"smoke": (4, 1, 2), "imagenet": (16, 100, 3), "imagenet_s": (16, 100, 3),
             "imagenet_b": (16, 100, 3)},
    "m2sd": {"smoke": (4, 1, 2), "cifar100": (24, 10, 2), "mini_imagenet": (24, 10, 2),
             "cub200": (24, 10, 2)},
    "mkd": {"smoke": (4, 1, 2), "coco": (12, 12, 2), "coco_r18": (12, 12, 2)},
    "smkd": {"smoke": (2, 1, 2), "cifar_fs": (16, 30, 2), "fc100": (16, 30, 2),
             "mini_imagenet": (16, 30, 2)},
    "sskd": {"smoke": (4, 1, 2), "cifar100": (16, 60, 2), "imagenet": (8, 30, 2)},
    "kd": {"smoke": (4, 1, 2), "cifar10": (4, 1, 2)},
}
STUDIES = {"cskd": "cskd_ablation", "m2sd": "m2sd_ablation", "mkd": "mkd_ablation",
           "smkd": "smkd_ablation", "sskd": "sskd_ablation", "kd": "kd_sweep"}


@pytest.mark.parametrize("method", sorted(STUDIES))
def test_studies_search_the_same_space_with_the_same_budget(method):
    """Every study x preset searches exactly the old space (keys, order, ranges) and budget; the
    `mini` evidence presets run their rows over at least 3 seeds (SSKD's 10) and search nothing."""
    mod = load_study(STUDIES[method])
    presets = mod.PRESETS if hasattr(mod, "PRESETS") else mod.P.PRESETS
    assert sorted(p for p in presets if p != "mini") == sorted(OLD_BUDGETS[method])
    for preset in presets:
        s = mod.build(preset)
        if preset == "mini":
            seeds = tuple(range(10)) if method == "sskd" else (0, 1, 2)
            assert s.space == {} and s.seeds == seeds and len(s.rows) >= 3
            continue
        assert list(s.space.items()) == list(OLD_SPACES[method].items()), preset
        assert (s.num_samples, s.grace_period, s.reduction_factor) == OLD_BUDGETS[method][preset]


def test_from_preset_builds_the_hand_built_study():
    """The old hand-written build() of the CSKD and M2SD studies against from_preset."""
    from kdray.data.fscil import protocol_for
    from kdray.presets import cskd, m2sd

    base = ExperimentConfig(method="cskd", name="cskd_ablation_smoke").override(cskd.PRESETS["smoke"])
    old = Study(name="cskd_ablation_smoke", base=base, metric="top1", mode="max",
                rows=tuple(Row(label, over, cskd.paper_number(key, "smoke"))
                           for label, key, over in cskd.ROWS),
                space=dict(OLD_SPACES["cskd"]), num_samples=4, grace_period=1, reduction_factor=2,
                columns=(("top-1", "top1"), ("top-5", "top5")),
                description=load_study("cskd_ablation").build("smoke").description,
                claims=(("Cumulative Spatial KD CKF linear", "DeiT hard distillation"),
                        ("DeiT hard distillation", "DeiT no distillation")))
    assert load_study("cskd_ablation").build("smoke") == old

    common, _, stage2 = m2sd.PRESETS["cifar100"]
    base = ExperimentConfig(method="m2sd", name="m2sd_ablation_cifar100").override(
        {**common, **stage2})
    new = load_study("m2sd_ablation").build("cifar100")
    assert new.base == base and new.metric == "fscil_avg"
    assert new.columns == m2sd.columns(protocol_for(base.data).sessions)
    assert new.rows == tuple(Row(label, over, m2sd.paper_number(key, "fscil_cifar100"))
                             for label, key, over in m2sd.ROWS)
    assert "CEC Avg 59.53" in new.description and "resnet20" in new.description
    assert new.claims == (("+ attention enhancement (full M2SD)",
                           "prototype baseline (CE continued)"),)


def test_a_row_with_its_own_length_is_finished_at_its_own_last_epoch():
    """A row that sets train.epochs (the SMKD mini CE baseline: 6 vs the base's 2) is 'finished'
    when it reports its own last epoch, not 'stopped' (which would drop it from the per-setting
    table); a trial short of its length is 'stopped'."""
    from types import SimpleNamespace

    from kdray.runtime.tune import _trial_record
    from kdray.study.spec import ROW_KEY, SEED_KEY

    study = load_study("smkd_ablation").build("mini")
    ce = study.rows[0]
    assert ce.overrides["train.epochs"] == 6 and study.base.train.epochs == 2
    # every mini row evaluates once, after its own last epoch
    assert ce.overrides["eval.every"] == 6 and study.base.eval.every == 2
    phase1 = load_study("smkd_ablation").phase1_config(study, "mini")
    assert phase1.eval.every == phase1.train.epochs == 4

    def rec(label, epoch):
        res = SimpleNamespace(metrics={"epoch": epoch}, config={ROW_KEY: label, SEED_KEY: 0},
                              error=None)
        return _trial_record(study, "grid", res, lambda t: 0, "t0")["status"]

    assert rec(ce.label, 6) == "finished" and rec(ce.label, 2) == "stopped"
    assert rec(study.rows[-1].label, 2) == "finished"


def test_the_table_states_the_search_from_the_plan_so_no_search_is_never_described(tmp_path):
    """`--no-search` empties the study's space after its description was written: the table's
    sentence about splits and search comes from the plan, so it cannot describe a search that did
    not run (the studies' own prose used to say "then a TPE search" regardless)."""
    from dataclasses import replace

    from kdray.study.describe import split_note
    from kdray.study.table import write_results_md

    study = load_study("dkd_ablation").build("smoke")
    assert study.space
    searched = split_note(study)
    assert searched.startswith("A TPE (Optuna) search over w_tckd, w_nckd, tau on top of the last "
                               f"row: {study.num_samples} trials, scored, stopped (ASHA) and "
                               "selected on val only (cifar10 has no val split apart ")
    assert searched.endswith("are scored on test.")
    random = split_note(replace(study, search="random", scheduler="none"))
    assert random.startswith("A random search over w_tckd") and "stopped" not in random
    mkd = split_note(load_study("mkd_ablation").build("smoke"))
    assert "a fixed 10% of the training images" in mkd  # detection data: not "of each class"
    plain = replace(study, space={})
    assert split_note(plain) == "Rows are scored on test; no search."
    text = write_results_md(plain, [], str(tmp_path / "r.md"), header={})
    paragraph = text.split("\n\n")[1]
    assert paragraph.endswith("Rows are scored on test; no search.") and "search" not in \
        paragraph.removesuffix("no search.").lower()
    # no study's own description speaks of a search: the plan's sentence is the only one
    for name in ("smkd_ablation", "sskd_ablation", "cskd_ablation", "m2sd_ablation",
                 "mkd_ablation", "dkd_ablation", "kd_sweep"):
        for preset in ("smoke", "mini"):
            mod = load_study(name)
            try:
                desc = mod.build(preset).description
            except KeyError:  # a study without this preset
                continue
            assert "search" not in desc.lower(), (name, preset, desc)


def test_the_planned_cost_names_rows_that_train_longer():
    """The console's plan line said "2 epochs each" for SMKD mini while its CE row trains 6."""
    from kdray.study.describe import study_cost

    mini = study_cost(load_study("smkd_ablation").build("mini"))
    assert mini == ("15 trials (5 rows x 3 seeds), 2 epochs each ('supervised CE, same ViT, "
                    "600 steps': 6); a trial: 1 worker x 1 CPU")
    smoke = study_cost(load_study("dkd_ablation").build("smoke"))
    assert smoke.endswith(", 2 epochs each; a trial: 1 worker x 1 CPU")
