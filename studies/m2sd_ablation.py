"""M2SD (AAAI 2024) FSCIL ablation: stage-1 cross-entropy base training once as a stage, then
stage-2 rows from its checkpoint (prototype baseline, + mixup, + CutMix, + symmetric KL, + attention
enhancement = full M2SD), then a TPE search (ASHA on stage-2 epochs) over alpha and the loss
weights. Every row is scored by the FSCIL session runner (prototype classifier, frozen backbone).
Writes results/m2sd_ablation_<preset>.md.

    python studies/m2sd_ablation.py --preset smoke      # generated data, CIFAR-100 shape, CPU
    python studies/m2sd_ablation.py --preset mini       # CIFAR-10 in FSCIL shape, 3 seeds, <1 h CPU
    python studies/m2sd_ablation.py --preset cifar100   # also mini_imagenet, cub200 (GPU)
"""

from kdray.config import ExperimentConfig
from kdray.data.fscil import protocol_for
from kdray.presets import m2sd as P
from kdray.runtime.cli_study import main
from kdray.runtime.driver import study_stage
from kdray.study import Study


def stage1_config(study: Study, preset: str) -> ExperimentConfig:
    """Stage 1: the study's base (command-line overrides included) as cross-entropy training."""
    return study.base.override({"method": "ce", **P.PRESETS[preset][1],
                                "name": f"{study.name}-stage1"})


def build(preset: str) -> Study:
    common, _, stage2 = P.PRESETS[preset]
    return Study.from_preset(
        "m2sd_ablation", preset, method="m2sd", overrides={**common, **stage2},
        rows=P.rows_for(preset), seeds=P.SEEDS.get(preset, (0,)), claims=P.CLAIMS,
        paper=lambda key, base: P.paper_number(key, base.data.dataset),
        space={} if preset == "mini" else P.SPACE,
        budget=P.BUDGET[preset], metric="fscil_avg",
        columns=lambda base: P.columns(protocol_for(base.data).sessions), description=_describe)


def _describe(base: ExperimentConfig) -> str:
    ds = base.data.dataset
    return (f"M2SD on {ds} ({base.model.arch}): every row starts from one stage-1 (CE base "
            f"training) checkpoint and trains {base.train.epochs} more epochs on the base session. "
            "Columns: top-1 (%) over all seen classes after each session (S0 = base), Avg, "
            "PD = S0 - last, and base / novel accuracy and their harmonic mean after the last "
            "session. References (docs/methods/m2sd.md §5.5, recalled): "
            f"{P.reference_note(ds)}.")


def with_stage1(study: Study, args) -> Study:
    """Run stage 1 once (reused on re-runs) and start every stage-2 trial from its checkpoint."""
    if study.base.train.init_from:
        return study
    cfg = stage1_config(study, args.preset)
    stage = study_stage(study, args, cfg, "stage1")
    m = stage.metrics
    key = cfg.eval.key
    got = (f"Avg {m.get(key('fscil_avg'), float('nan')):.2f}, PD "
           f"{m.get(key('fscil_pd'), float('nan')):.2f} after {cfg.train.epochs} epochs "
           f"({cfg.eval.split})")
    print(f"[kdray] stage 1 (CE base training + prototypes): {got} ({stage.checkpoint})")
    return study.starting_from("train.init_from", stage.checkpoint,
                               f"Stage-1 model with prototypes: {got}.")


if __name__ == "__main__":
    main(build, __doc__, list(P.PRESETS), before=with_stage1)
