"""SMKD (CVPR 2023) ablation: phase 1 (iBOT) once as a stage, then phase-2 rows from its
checkpoint (phase 1 continued, + Eq. 3, + Eq. 5, released-code variant, full), then a TPE search
(ASHA) over lambda_patch, the teacher temperature and the mask ratio.
Writes results/smkd_ablation_<preset>.md.

    python studies/smkd_ablation.py --preset smoke      # generated few-shot data, CPU, minutes
    python studies/smkd_ablation.py --preset mini       # Omniglot, 28-px ViT, 5 rows x 3 seeds, ~1 h CPU
    python studies/smkd_ablation.py --preset cifar_fs   # paper settings (also fc100, mini_imagenet)
"""

from kdray.config import ExperimentConfig
from kdray.presets import smkd as P
from kdray.runtime.cli_study import main
from kdray.runtime.driver import study_stage
from kdray.study import Study


def phase1_config(study: Study, preset: str) -> ExperimentConfig:
    """The phase-1 stage: the study's base (command-line overrides included) as iBOT."""
    return study.base.override({**P.PRESETS[preset][1], "name": f"{study.name}-phase1"})


def build(preset: str) -> Study:
    common, _, phase2 = P.PRESETS[preset]
    mini = preset == "mini"
    ways = ("5w1s", "20w1s") if mini else ("5w1s", "5w5s")
    return Study.from_preset(
        "smkd_ablation", preset, method="smkd", overrides={**common, **phase2},
        rows=P.rows_for(preset), paper=lambda key, base: P.paper_number(key, preset),
        space={} if mini else P.SPACE, budget=P.BUDGET[preset],
        metric="acc_20w1s" if mini else "acc_5w1s",
        columns=tuple((w, f"acc_{w}") for w in ways),
        seeds=(0, 1, 2) if mini else (0,), baseline=P.MINI_BASELINE if mini else "",
        claims=P.MINI_CLAIMS if mini else (),
        description=lambda base: (
            f"SMKD on {base.data.dataset}, {base.model.arch}: every SMKD row starts from one "
            f"phase-1 (iBOT) checkpoint and trains {base.train.epochs} more epochs, so 'phase 1 "
            "only' is iBOT continued for the same compute. "
            f"{' / '.join(ways)} prototype accuracy (%) ± 95% CI on {base.eval.episodes} episodes. "
            + (
                "The supervised CE row trains the same ViT from scratch (single crops, a linear "
                "classifier over the training classes) for phase 1's and phase 2's steps together. "
                "No paper number matches this setting (the paper has no Omniglot table)." if mini
                else "Paper column: docs/methods/smkd.md §1.5 (1-shot / 5-shot; iBOT = the "
                "README's phase-1 model, SMKD = paper Tables 1-2, implementation unknown).")))


def with_phase1(study: Study, args) -> Study:
    """Run phase 1 once (reused on re-runs) and start every phase-2 trial from its checkpoint."""
    if study.base.train.init_from:
        return study
    cfg = phase1_config(study, args.preset)
    stage = study_stage(study, args, cfg, "phase1")
    m, names = stage.metrics, [name for name, _ in study.columns]
    acc = (" / ".join(f"{m.get(cfg.eval.key(key), float('nan')):.2f}" for _, key in study.columns)
           + f" after {cfg.train.epochs} epochs ({cfg.eval.split})")
    print(f"[kdray] phase 1 (iBOT): {' / '.join(names)} {acc} ({stage.checkpoint})")
    return study.starting_from("train.init_from", stage.checkpoint,
                               f"Phase-1 stage itself: {acc}.")


if __name__ == "__main__":
    main(build, __doc__, list(P.PRESETS), before=with_phase1)
