"""SMKD: each loss term against hand-computed / loop-computed values, and the method contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import gloo_group

from kdray.config import ConfigError, DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from kdray.engine.preflight import method_preflight
from kdray.methods import build_method
from kdray.methods.smkd import losses as L
from kdray.methods.smkd.method import SMKD
from kdray.modules.ema import ema_momentum
from kdray.types import Batch, Step

HEALTH = {"t_entropy", "t_maxprob", "t_one_prototype"}  # teacher health, logged with the terms

G = 2


def _probs(*shape: int) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape) * 2, dim=-1)


def _logp(*shape: int) -> torch.Tensor:
    return torch.log_softmax(torch.randn(*shape) * 2, dim=-1)


def _h(p: torch.Tensor, logq: torch.Tensor) -> float:
    return -sum(float(a) * float(b) for a, b in zip(p, logq))


# ---------------------------------------------------------------------------- Eq. 1 / Eq. 3
def test_eq1_cls_hand_computed():
    t = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])                       # (G=2, B=1, K=2)
    s = torch.log(torch.tensor([[[0.25, 0.75]], [[0.5, 0.5]]]))          # (V=2, B=1, K=2)
    pairs = L.cls_pair_mask(torch.arange(1), 2, 2, same_image=True)
    expected = 0.5 * (math.log(2) + 0.5 * (math.log(4) + math.log(4 / 3)))
    assert float(L.cls_loss(t, s, pairs)) == pytest.approx(expected, rel=1e-6)


def test_eq1_cls_matches_dino_loop():
    torch.manual_seed(0)
    b, v = 3, 5
    t, s = _probs(G, b, 6), _logp(v, b, 6)
    terms = []
    for q in range(G):
        for w in range(v):
            if w != q:
                terms.append(sum(_h(t[q, i], s[w, i]) for i in range(b)) / b)
    pairs = L.cls_pair_mask(torch.arange(b), G, v, same_image=True)
    assert float(L.cls_loss(t, s, pairs)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


@pytest.mark.parametrize("same_image", [True, False])
def test_eq3_cls_supervised_matches_loop(same_image):
    torch.manual_seed(1)
    labels = torch.tensor([0, 1, 0, 0, 2])
    b, v = 5, 4
    t, s = _probs(G, b, 6), _logp(v, b, 6)
    vals = []
    for q in range(G):
        for i in range(b):
            for w in range(v):
                for j in range(b):
                    if w >= G:
                        ok = i == j                                   # locals: own image only
                    else:
                        ok = bool(labels[i] == labels[j]) and not (i == j and w == q)
                        ok = ok and (same_image or i != j)
                    if ok:
                        vals.append(_h(t[q, i], s[w, j]))
    pairs = L.cls_pair_mask(labels, G, v, same_image=same_image)
    assert int(pairs.sum()) == len(vals)
    assert float(L.cls_loss(t, s, pairs)) == pytest.approx(sum(vals) / len(vals), rel=1e-5)


def test_positive_mining_pairs_exactly_same_label_images():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (12,), generator=g)
    m = L.global_pair_mask(labels, G, same_image=False)
    for q in range(G):
        for v in range(G):
            got = {(int(i), int(j)) for i, j in m[q, :, v].nonzero()}
            want = {(i, j) for i in range(12) for j in range(12)
                    if i != j and labels[i] == labels[j]}
            assert got == want
    m2 = L.global_pair_mask(labels, G, same_image=True)
    assert bool(m2[0, 5, 1, 5]) and not bool(m2[0, 5, 0, 5])   # other view yes, same view no


# ---------------------------------------------------------------------------- Eq. 2
def test_eq2_mim_hand_computed():
    t = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]]])   # (1, 2, 2, 2)
    s = torch.log(torch.tensor([[[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [0.2, 0.8]]]]))
    masks = torch.tensor([[[True, False], [False, False]]])
    # image 0: only patch 0 masked -> H = ln 2; image 1 unmasked -> 0; mean over 2 images
    assert float(L.mim_loss(t, s, masks)) == pytest.approx(math.log(2) / 2, rel=1e-6)


def test_eq2_mim_masked_only_average_matches_loop():
    torch.manual_seed(2)
    b, n = 3, 5
    t, s = _probs(G, b, n, 4), _logp(G, b, n, 4)
    masks = torch.rand(G, b, n) < 0.5
    masks[0, 1] = False
    per_view = []
    for q in range(G):
        per_img = []
        for i in range(b):
            ks = [k for k in range(n) if masks[q, i, k]]
            per_img.append(sum(_h(t[q, i, k], s[q, i, k]) for k in ks) / max(1, len(ks)))
        per_view.append(sum(per_img) / b)
    assert float(L.mim_loss(t, s, masks)) == pytest.approx(sum(per_view) / G, rel=1e-5)


# ---------------------------------------------------------------------------- Eq. 4-5
def test_eq4_matching_picks_the_cosine_nearest_student_patch():
    torch.manual_seed(4)
    b, n, d, k = 2, 5, 3, 4
    t_feat = torch.randn(G, b, n, d)
    perm = torch.tensor([3, 0, 4, 1, 2])
    s_feat = torch.randn(G, b, n, d)
    s_feat[1, 1] = 2.5 * t_feat[0, 0][perm]              # student patch l copies teacher perm[l]
    inv = torch.argsort(perm)                             # teacher patch k sits at student inv[k]
    t, s = _probs(G, b, n, k), _logp(G, b, n, k)
    w = torch.softmax(torch.randn(G, b, n), -1)
    pairs = torch.zeros(G, b, G, b, dtype=torch.bool)
    pairs[0, 0, 1, 1] = True
    expected = sum(float(w[0, 0, q]) * _h(t[0, 0, q], s[1, 1, inv[q]]) for q in range(n))
    got = L.patch_loss_paper(t, s, t_feat, s_feat, w, pairs)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def _paper_reference(t, s, tf, sf, w, labels):
    b, n = labels.shape[0], t.shape[2]
    terms = []
    for tv in range(G):
        for i in range(b):
            for sv in range(G):
                for j in range(b):
                    if labels[i] != labels[j] or (i == j and sv == tv):
                        continue
                    term = 0.0
                    for k in range(n):
                        cos = [float(F.cosine_similarity(tf[tv, i, k], sf[sv, j, m], dim=0))
                               for m in range(n)]
                        kp = max(range(n), key=lambda m: cos[m])
                        term += float(w[tv, i, k]) * _h(t[tv, i, k], s[sv, j, kp])
                    terms.append(term)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("wk_mode", ["uniform", "attention"])
def test_eq5_patch_paper_matches_loop(wk_mode):
    torch.manual_seed(5)
    labels = torch.tensor([1, 0, 1, 1])
    b, n = 4, 4
    t, s = _probs(G, b, n, 5), _logp(G, b, n, 5)
    tf, sf = torch.randn(G, b, n, 3), torch.randn(G, b, n, 3)
    w = torch.full((G, b, n), 1 / n) if wk_mode == "uniform" else torch.softmax(
        torch.randn(G, b, n), -1)
    pairs = L.global_pair_mask(labels, G, same_image=True)
    got = L.patch_loss_paper(t, s, tf, sf, w, pairs)
    assert float(got) == pytest.approx(_paper_reference(t, s, tf, sf, w, labels), rel=1e-5)


def _paper_gathered(t_probs, s_logp, t_feat, s_feat, t_weight, pairs):
    """The earlier dense implementation of Eq. 4-5 (pair x patch x prototype gathers), kept as
    the reference for the sparse-target `patch_loss_paper`."""
    t, i, s, j = pairs.nonzero().unbind(1)
    n, b = s_logp.shape[2], s_logp.shape[1]
    with torch.no_grad():
        tf = F.normalize(t_feat[t, i].float(), dim=-1)
        sf = F.normalize(s_feat[s, j].float(), dim=-1)
        best = (tf @ sf.transpose(1, 2)).argmax(-1)
    rows = ((s * b + j)[:, None] * n + best).reshape(-1)
    s_rows = s_logp.reshape(-1, s_logp.shape[-1]).index_select(0, rows).view(*best.shape, -1)
    ce = -(t_probs[t, i] * s_rows).sum(-1)
    return (ce * t_weight[t, i]).sum(-1).mean()


@pytest.mark.parametrize("wk_mode,chunk", [("uniform", 64), ("attention", 64), ("attention", 3)])
def test_eq5_patch_paper_sparse_target_equals_gathered_loss_and_gradients(wk_mode, chunk):
    torch.manual_seed(7)
    b, n, k, d = 12, 9, 7, 5
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3, 1, 2, 0, 4])
    t = _probs(G, b, n, k).double().requires_grad_()
    x = torch.randn(G, b, n, k, dtype=torch.float64, requires_grad=True)
    tf, sf = torch.randn(G, b, n, d).double(), torch.randn(G, b, n, d).double()
    w = (torch.full((G, b, n), 1 / n) if wk_mode == "uniform"
         else torch.softmax(torch.randn(G, b, n), -1)).double().requires_grad_()
    pairs = L.global_pair_mask(labels, G, same_image=True)
    losses, grads = [], []
    for fn in (_paper_gathered, lambda *a: L.patch_loss_paper(*a, chunk=chunk)):
        loss = fn(t, torch.log_softmax(x, -1), tf, sf, w, pairs)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, (x, t, w)))
    assert losses[1].dtype == torch.float64
    assert abs(float((losses[0] - losses[1]).detach())) <= 1e-10
    for ref, got in zip(*grads):
        assert float((ref - got).abs().max()) <= 1e-10


def _official_reference(t, s, tf, sf, labels, attn):
    """The released code's semantics (docs/methods/smkd.md §1.2), written as group-flattened tensors."""
    n, k = t.shape[2], t.shape[3]
    terms = []
    for sv in range(G):
        for tv in range(G):
            if sv == tv:
                continue
            for lab in sorted(set(labels.tolist())):
                grp = [x for x in range(len(labels)) if labels[x] == lab]
                g = len(grp)
                sfn, tfn = F.normalize(sf[sv, grp], dim=-1), F.normalize(tf[tv, grp], dim=-1)
                # different letters for the two channel axes: each is summed on its own
                best = torch.einsum("snc,tNC->tsNn", sfn, tfn).argmax(-1)     # (g, g, N)
                s2d = s[sv, grp].reshape(g * n, k)
                t2d = t[sv, grp].reshape(g * n, k)                           # target from view s
                for i in range(g):
                    ce = -(t2d * s2d[best[i].reshape(-1)]).sum(-1)           # rows of image 0
                    if attn is not None:
                        terms.append(float((ce * attn[tv, grp].reshape(-1)).sum()))
                    elif g > 1:
                        ce[i * n:(i + 1) * n] = 0
                        terms.append(float(ce.sum()) / ((g - 1) * n))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("wk_mode", ["uniform", "attention"])
def test_eq5_patch_official_matches_released_semantics(wk_mode):
    torch.manual_seed(6)
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    b, n = 6, 4
    t, s = _probs(G, b, n, 5), _logp(G, b, n, 5)
    tf, sf = torch.randn(G, b, n, 3), torch.randn(G, b, n, 3)
    attn = None if wk_mode == "uniform" else torch.softmax(torch.randn(G, b, n), -1)
    got = L.patch_loss_official(t, s, tf, sf, labels, attn)
    assert float(got) == pytest.approx(_official_reference(t, s, tf, sf, labels, attn), rel=1e-5)
    w = attn if attn is not None else torch.full((G, b, n), 1 / n)
    paper = L.patch_loss_paper(t, s, tf, sf, w, L.global_pair_mask(labels, G, same_image=True))
    assert abs(float(paper) - float(got)) > 1e-3          # the two implementations really differ


def test_empty_pair_sets_give_an_attached_zero():
    s = _logp(G, 2, 3, 4).requires_grad_()
    z = L.patch_loss_official(_probs(G, 2, 3, 4), s, torch.randn(G, 2, 3, 2),
                              torch.randn(G, 2, 3, 2), torch.arange(2), None)
    assert float(z.detach()) == 0.0 and z.requires_grad


# ---------------------------------------------------------------------------- the method
def _cfg(*, mask_prob: float = 0.5, init_from: str = "", **mc) -> ExperimentConfig:
    method_cfg = {"phase": "supervised", "allow_scratch": True, "out_dim": 16,
                  "hidden_dim": 16, "bottleneck_dim": 8, **mc}
    return ExperimentConfig(
        method="smkd", data=DataConfig(augment="multicrop", local_crops=2, local_size=16,
                                       patch_size=4, mask_prob=mask_prob),
        model=ModelConfig(arch="vit_nano_p4_32"), train=TrainConfig(init_from=init_from),
        method_cfg=method_cfg)


def _batch(masked: bool = True) -> Batch:
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(G)]
    views += [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)]
    masks = [torch.rand(4, 8, 8, generator=g) < 0.4 for _ in range(G)] if masked else None
    return Batch(views=views, labels=torch.tensor([0, 1, 0, 1]), masks=masks)


STEP = Step(it=3, epoch=0, total_its=20, its_per_epoch=10)


def _build(**kw) -> SMKD:
    torch.manual_seed(0)
    return build_method(_cfg(**kw), num_classes=2)


def _grads_ok(m: SMKD) -> None:
    missing = [n for n, p in m.student.named_parameters() if p.grad is None]
    assert not missing, f"student parameters without gradient (DDP would fail): {missing}"
    assert all(not p.requires_grad and p.grad is None for p in m.teacher.parameters())


@pytest.mark.parametrize("patch_impl,wk_mode", [("paper", "uniform"), ("paper", "attention"),
                                                ("official", "uniform"),
                                                ("official", "attention")])
def test_all_branches_reach_every_student_param_and_never_the_teacher(patch_impl, wk_mode):
    m = _build(w_mim=1.0, patch_impl=patch_impl, wk_mode=wk_mode)
    out = m(_batch(), STEP)
    assert set(out) - HEALTH == {"loss", "cls", "patch", "mim"} and HEALTH <= set(out)
    assert all(v.dim() == 0 and not v.requires_grad for k, v in out.items() if k != "loss")
    out["loss"].backward()
    _grads_ok(m)


def test_loss_is_the_weighted_sum_of_unweighted_terms():
    m = _build(w_cls=0.5, w_patch=2.0, w_mim=0.3)
    out = m(_batch(), STEP)
    expected = 0.5 * out["cls"] + 2.0 * out["patch"] + 0.3 * out["mim"]
    torch.testing.assert_close(out["loss"].detach(), expected)


def test_zero_patch_and_mim_weights_build_and_compute_nothing():
    m = _build(mask_prob=0.0)                             # supervised: w_mim defaults to 0
    m = _build(mask_prob=0.0, w_patch=0.0)
    assert m.patch_center is None and m.student.backbone.mask_token is None
    rows = []
    m.student.head.register_forward_hook(lambda mod, i, o: rows.append(i[0].shape[0]))
    out = m(_batch(masked=False), STEP)
    assert set(out) - HEALTH == {"loss", "cls"} and rows == [4 * 4]   # [CLS] of 4 views only
    out["loss"].backward()
    _grads_ok(m)


def test_zero_cls_weight_skips_local_crops():
    m = _build(w_cls=0.0, w_mim=1.0)
    sizes = []
    m.student.backbone.register_forward_hook(lambda mod, i, o: sizes.append(tuple(i[0].shape)))
    out = m(_batch(), STEP)
    assert set(out) - HEALTH == {"loss", "patch", "mim"} and sizes == [(8, 3, 32, 32)]
    out["loss"].backward()
    _grads_ok(m)


def test_cls_term_uses_centre_temperatures_and_view_order():
    m = _build(w_patch=0.0)
    m.cls_center.center.normal_()
    batch = _batch()
    out = m(batch, STEP)
    with torch.no_grad():
        t = m.teacher.head(torch.cat([m.teacher.backbone(v).cls for v in batch.views[:G]]))
        s = m.student.head(torch.cat([m.student.backbone(v, mk).cls for v, mk in
                                      zip(batch.views, batch.masks + [None, None])]))
    temp = 0.04 + (0.07 - 0.04) * STEP.epoch_float / 30
    tp = torch.softmax((t - m.cls_center.center) / temp, -1).view(G, 4, -1)
    sl = torch.log_softmax(s / 0.1, -1).view(4, 4, -1)
    expected = L.cls_loss(tp, sl, L.cls_pair_mask(batch.labels, G, 4, same_image=True))
    torch.testing.assert_close(out["cls"], expected)


def test_ssl_phase_ignores_labels():
    m = _build(phase="ssl", w_patch=1.0)
    a, b = _batch(), _batch()
    b.labels = torch.tensor([0, 0, 0, 0])
    torch.testing.assert_close(m(a, STEP)["loss"], m(b, STEP)["loss"])


def test_after_step_updates_ema_and_centres():
    m = _build(w_mim=1.0)
    before = {k: v.clone() for k, v in m.teacher.named_parameters()}
    batch = _batch()
    m(batch, STEP)
    with torch.no_grad():
        t = m.teacher(batch.views[:G])
        for p in m.student.parameters():
            p.add_(0.1)
    m.after_step(STEP)
    mom = ema_momentum(STEP.progress, 0.996)
    s_params = dict(m.student.named_parameters())
    for k, v in m.teacher.named_parameters():
        torch.testing.assert_close(v, mom * before[k] + (1 - mom) * s_params[k])
    torch.testing.assert_close(m.cls_center.center, 0.1 * t.cls.mean(0, keepdim=True))
    torch.testing.assert_close(m.patch_center.center, 0.1 * t.patch.mean(1).mean(0, keepdim=True))


def test_teacher_temperature_warmup():
    m = _build()
    temps = [m.teacher_temp(Step(it=i, epoch=0, total_its=10**4, its_per_epoch=10))
             for i in (0, 150, 300, 900)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_freeze_last_layer_drops_its_gradient_only():
    m = _build(w_mim=1.0)
    m.cfg = m.cfg.override({"optim.freeze_last_layer_epochs": 1})
    m(_batch(), STEP)["loss"].backward()
    m.on_after_backward(STEP)
    assert all(p.grad is None for p in m.student.head.last_layer.parameters())
    assert m.student.head.mlp[0].weight.grad is not None
    m.on_after_backward(Step(it=30, epoch=1, total_its=40, its_per_epoch=10))  # later: no-op


def test_features_teacher_cls_and_attention_pooled_patches():
    m = _build()
    x = torch.randn(3, 3, 32, 32)
    f = m.features(x)
    assert f.shape == (3, 96)
    torch.testing.assert_close(f[:, :48].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(f[:, 48:].norm(dim=-1), torch.ones(3))
    out = m.teacher.backbone(x, return_attn=True)
    torch.testing.assert_close(f[:, :48], F.normalize(out.cls, dim=-1))
    pooled = torch.einsum("bn,bnd->bd", out.attn, out.patch)
    torch.testing.assert_close(f[:, 48:], F.normalize(pooled, dim=-1))


def test_preflight_errors():
    method_preflight(_cfg())                                     # allow_scratch: fine
    with pytest.raises(ConfigError, match="phase 2 needs a phase-1 checkpoint"):
        method_preflight(_cfg(allow_scratch=False))
    with pytest.raises(ConfigError, match="multicrop"):
        method_preflight(_cfg().override({"data.augment": "basic"}))
    with pytest.raises(ConfigError, match="patch size"):
        method_preflight(_cfg().override({"data.patch_size": 8}))
    with pytest.raises(ConfigError, match="mask_prob"):
        method_preflight(_cfg(mask_prob=0.0, phase="ssl"))
    with pytest.raises(ConfigError, match="ViT"):
        method_preflight(_cfg().override({"model.arch": "conv4"}))
    with pytest.raises(ConfigError, match="at least one"):
        _cfg(w_cls=0.0, w_patch=0.0)


def test_load_phase1_roundtrip_and_errors(tmp_path):
    m1 = _build(phase="ssl")
    m1.cls_center.center.fill_(0.5)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": m1.checkpoint_state()}, path)
    m2 = _build(mask_prob=0.0, init_from=str(path))             # phase 2 without masking
    method_preflight(_cfg(allow_scratch=False, init_from=str(path)))
    m2.init_from_checkpoint(str(tmp_path))                      # a directory works too
    for name in ("student", "teacher"):
        own = getattr(m2, name).state_dict()
        for k, v in getattr(m1, name).state_dict().items():
            if not k.endswith("mask_token"):
                assert torch.equal(own[k], v), k
    assert torch.equal(m2.cls_center.center, m1.cls_center.center)
    with pytest.raises(ConfigError, match="does not fit"):
        build_method(_cfg(out_dim=32), num_classes=2).load_phase1(str(path))
    with pytest.raises(ConfigError, match="run phase 1 first"):
        m2.load_phase1(str(tmp_path / "missing.pt"))


def _ddp_worker(rank: int, port: int, out: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel

    with gloo_group(rank, f"tcp://127.0.0.1:{port}"):
        for n, kw in enumerate([{"w_mim": 1.0, "wk_mode": "attention"}, {"w_cls": 0.0}]):
            m = _build(**kw)
            m.student = DistributedDataParallel(m.student)   # find_unused_parameters=False
            batch = _batch()
            batch.views = [v + rank for v in batch.views]     # different data on each rank
            for _ in range(2):   # DDP raises in the 2nd step if a parameter went unused
                m(batch, STEP)["loss"].backward()
                m.after_step(STEP)
            out[(n, rank)] = (torch.cat([p.grad.flatten() for p in m.student.parameters()]),
                              m.cls_center.center.clone())


def test_ddp_two_gloo_processes_no_unused_parameters():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.get_context("spawn").Manager().dict()  # no fork of a process that may host Ray
    mp.spawn(_ddp_worker, args=(port, out), nprocs=2, join=True)
    for n in range(2):
        torch.testing.assert_close(out[(n, 0)][0], out[(n, 1)][0])   # grads all-reduced
        torch.testing.assert_close(out[(n, 0)][1], out[(n, 1)][1])   # centre all-reduced
