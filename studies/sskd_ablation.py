r"""SSKD (ECCV 2020) ablation: CE only, KD, KD + L_T, KD + L_ss, selective-transfer ratios
{0, 0.25, 0.5, 1.0} and full SSKD (ratio 0.75), then a TPE search (ASHA) over w_ss, w_tf, tau_ss
and ratio_ss. The teacher (T1, method ce) and its SS module (T2, method sskd_teacher) are trained
first as tracked stages and registered with a card (checksum, arch, dataset, accuracy).
Writes results/sskd_ablation_<preset>.md.

    python studies/sskd_ablation.py --preset smoke      # CIFAR-10, conv4 -> conv2, CPU, minutes
    python studies/sskd_ablation.py --preset mini       # CIFAR-10, resnet20 -> resnet8, 10 seeds, <1 h CPU
    python studies/sskd_ablation.py --preset cifar100   # WRN-40-2 -> WRN-16-2, 240 epochs
    python studies/sskd_ablation.py --preset cifar100 --set model.teacher_arch=resnet32x4 \
        --set model.arch=shufflenetv1                   # any pair of the paper's table
    python studies/sskd_ablation.py --preset imagenet --set model.teacher_ckpt=resnet34.pth
                                                        # timm resnet34 -> resnet18, T2 only
"""

from dataclasses import replace

from kdray.methods.sskd.method import teacher_states
from kdray.presets import sskd as P
from kdray.runtime import driver
from kdray.runtime.cli_study import main
from kdray.runtime.teacher_stage import teacher_stage
from kdray.study import Study


def build(preset: str) -> Study:
    return Study.from_preset(
        "sskd_ablation", preset, method="sskd", overrides=P.PRESETS[preset],
        rows=P.rows_for(preset), seeds=P.SEEDS.get(preset, (0,)), claims=P.CLAIMS,
        paper=lambda key, base: P.paper_number(key, base.model.teacher_arch, base.model.arch,
                                               preset),
        space={} if preset == "mini" else P.SPACE, budget=P.BUDGET[preset], metric="top1",
        columns=(("top-1", "top1"), ("top-5", "top5")),
        description=lambda base: "SSKD (CNN teacher -> CNN student): ablation ladder"
                    + (" (CE, KD, SSKD)." if preset == "mini" else ".")
                    + " Paper column: CIFAR-100 top-1 of the same pair (docs/methods/sskd.md §3.6"
                    + ("; mini: of the resnet56 -> resnet20 pair it narrows, on another dataset, "
                       "labelled C100)." if preset == "mini" else ")."))


def with_teacher(study: Study, args) -> Study:
    """Train T1 (unless model.teacher_ckpt is given) and T2 (unless that checkpoint already has an
    SS module), register the teacher, and set the pair's learning rate and paper numbers."""
    preset, base = args.preset, study.base
    t_arch, s_arch = base.model.teacher_arch, base.model.arch
    if base.optim.lr == float(P.PRESETS[preset]["optim.lr"]):  # not set on the command line
        base = base.override({"optim.lr": P.lr_for(s_arch, preset)})
    rows = tuple(replace(r, paper=P.paper_number(k, t_arch, s_arch, preset))
                 for r, (_, k, _) in zip(study.rows, P.rows_for(preset)))
    study = replace(study, base=base, rows=rows)
    given = base.model.teacher_ckpt
    if given and teacher_states(given)[1] is not None:
        return study  # a finished T2 checkpoint: nothing to train
    if not given:  # T1; a given classifier checkpoint (e.g. torchvision weights) skips it
        t1 = base.override({**P.TEACHER[preset], "model.arch": t_arch, "model.teacher_arch": "",
                            "optim.lr": P.lr_for(t_arch, preset), "name": f"{study.name}-t1"})
        given = driver.study_stage(study, args, t1, f"t1-{t_arch}").checkpoint
    t2 = base.override({**P.SS_HEAD[preset], "model.teacher_ckpt": given,
                        "optim.lr": P.lr_for(t_arch, preset), "name": f"{study.name}-t2",
                        "method_cfg.transforms": base.method_cfg.transforms})
    r2 = teacher_stage(study, args, t2, f"t2-{t_arch}", arch=t_arch,
                       ss_transforms=base.method_cfg.transforms, ss_acc_key="train/ss_acc")
    acc = r2.score
    paper_t = P.paper_number("teacher", t_arch, s_arch, preset)
    # preflight re-measures the registered teacher before any row starts (5-point slack: it
    # scores method_cfg.teacher_eval_items images, the card the full split)
    check = {"model.teacher_ckpt": r2.checkpoint, "method_cfg.require_card": True,
             "method_cfg.teacher_min_acc": max(0.0, round(acc - 5.0, 2)) if acc == acc else 0.0}
    return replace(study, base=base.override(check),
                   description=study.description + f" Teacher {t_arch}: top-1 {acc:.2f}% "
                   f"(paper {paper_t or 'n/a'}).")


if __name__ == "__main__":
    main(build, __doc__, list(P.PRESETS), before=with_teacher)
