"""Unit tests of shared modules: EMA teacher, centring (incl. 2-process gloo), ViT, head, multi-crop."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers import gloo_group
from torch import nn

from kdray.modules.center import Center
from kdray.modules.ema import ema_momentum, ema_update_, frozen_copy
from kdray.modules.heads import IBOTHead
from kdray.modules.multicrop import MultiCropModel, resolution_groups
from kdray.modules.vit import VIT_SPECS, MaskedViT, build_vit, cls_attention


# ---------------------------------------------------------------------------- EMA
class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


def test_frozen_copy_is_gradient_free_eval_and_independent():
    torch.manual_seed(0)
    s = _Tiny().train()
    t = frozen_copy(s)
    assert not t.training
    assert all(not p.requires_grad for p in t.parameters())
    assert all(p.requires_grad for p in s.parameters())
    with torch.no_grad():
        s.lin.weight.add_(1.0)
    assert not torch.equal(t.lin.weight, s.lin.weight)  # a copy, not shared storage


def test_ema_step_matches_lerp_formula_and_copies_buffers():
    torch.manual_seed(0)
    s = _Tiny()
    t = frozen_copy(s)
    t_before = {k: v.clone() for k, v in t.state_dict().items()}
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(torch.randn_like(p))
        s.bn.running_mean.fill_(3.0)
    m = 0.9
    ema_update_(t, s, m)
    for name, p in s.named_parameters():
        expected = m * t_before[name] + (1 - m) * p.detach()
        torch.testing.assert_close(dict(t.named_parameters())[name], expected)
    assert torch.equal(t.bn.running_mean, torch.full((2,), 3.0))
    before = {k: v.clone() for k, v in t.state_dict().items()}
    ema_update_(t, s, 1.0)  # momentum 1 leaves the parameters unchanged
    for name, p in t.named_parameters():
        assert torch.equal(p, before[name])


def test_ema_momentum_cosine_endpoints():
    assert ema_momentum(0.0, 0.996) == pytest.approx(0.996)
    assert ema_momentum(1.0, 0.996) == pytest.approx(1.0)
    assert ema_momentum(0.5, 0.996) == pytest.approx(0.998)  # half-way on a half-cosine


# ---------------------------------------------------------------------------- centre
def test_center_update_single_process():
    c = Center(3, momentum=0.9)
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    c.update(x)
    torch.testing.assert_close(c.center, torch.tensor([[0.2, 0.2, 0.2]]))
    c.update(torch.zeros(4, 3))
    torch.testing.assert_close(c.center, torch.tensor([[0.18, 0.18, 0.18]]))
    torch.testing.assert_close(c(x), x - 0.18)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _center_worker(rank: int, port: int, cases: list[list[torch.Tensor]], out: dict) -> None:
    with gloo_group(rank, f"tcp://127.0.0.1:{port}"):
        for n, chunks in enumerate(cases):
            c = Center(chunks[0].shape[-1], momentum=0.9)
            c.center.fill_(1.0)
            c.update(chunks[rank])
            out[(n, rank)] = c.center.clone()


def test_center_all_reduce_equals_concatenated_mean_two_gloo_processes():
    torch.manual_seed(0)
    cases = [[torch.randn(n, 4) for n in sizes] for sizes in ((3, 3), (2, 5))]  # equal, unequal
    out = mp.get_context("spawn").Manager().dict()
    mp.spawn(_center_worker, args=(_free_port(), cases, out), nprocs=2, join=True)
    for n, chunks in enumerate(cases):
        expected = 0.9 * torch.ones(1, 4) + 0.1 * torch.cat(chunks).mean(0, keepdim=True)
        for rank in range(2):
            torch.testing.assert_close(out[(n, rank)], expected)


# ---------------------------------------------------------------------------- ViT, head, multi-crop
def _vit() -> MaskedViT:
    torch.manual_seed(0)
    return MaskedViT(build_vit(VIT_SPECS["vit_nano_p4_32"]).eval())


def test_masked_vit_matches_timm_without_mask_and_ignores_masked_content():
    vit = _vit()
    x = torch.randn(2, 3, 32, 32)
    out = vit(x)
    ref = vit.vit.forward_features(x)
    torch.testing.assert_close(out.cls, ref[:, 0])
    torch.testing.assert_close(out.patch, ref[:, 1:])
    full = torch.ones(2, 8, 8, dtype=torch.bool)
    a, b = vit(x, full), vit(torch.randn(2, 3, 32, 32), full)
    torch.testing.assert_close(a.patch, b.patch)  # every patch replaced: content does not matter
    with torch.no_grad():
        vit.mask_token.normal_()
    one = torch.zeros(2, 8, 8, dtype=torch.bool)
    one[:, 0, 0] = True
    y = x.clone()
    y[:, :, :4, :4] = 5.0  # only the masked patch changes
    torch.testing.assert_close(vit(x, one).cls, vit(y, one).cls)
    assert not torch.allclose(vit(x).cls, vit(y).cls)


def test_masked_vit_local_crop_interpolates_positions():
    out = _vit()(torch.randn(3, 3, 16, 16))
    assert out.cls.shape == (3, 48) and out.patch.shape == (3, 16, 48)


def test_cls_attention_matches_unfused_timm_attention():
    vit = _vit()
    x = torch.randn(2, 3, 32, 32)
    blk = vit.vit.blocks[-1]
    seen = {}
    blk.attn.fused_attn = False
    blk.attn.attn_drop.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    out = vit(x, return_attn=True)
    tokens = vit._tokens(x, None)
    for b in list(vit.vit.blocks)[:-1]:
        tokens = b(tokens)
    a = seen["a"][:, :, 0, 1:].mean(1)
    expected = a / a.sum(-1, keepdim=True)
    torch.testing.assert_close(out.attn, expected)
    torch.testing.assert_close(cls_attention(blk, tokens), expected)
    torch.testing.assert_close(out.attn.sum(-1), torch.ones(2))


def test_ibot_head_shapes_and_weight_norm():
    torch.manual_seed(0)
    h = IBOTHead(8, out_dim=5, hidden_dim=6, bottleneck_dim=4, norm_last_layer=True)
    assert h(torch.randn(2, 3, 8)).shape == (2, 3, 5)
    assert h.last_layer.weight_g is None
    z = torch.nn.functional.normalize(h.mlp(torch.randn(7, 8)), dim=-1)
    w = h.last_layer.weight_v / h.last_layer.weight_v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(h.last_layer(z), z @ w.T)
    g = IBOTHead(8, out_dim=5, hidden_dim=6, bottleneck_dim=4, norm_last_layer=False)
    assert g.last_layer.weight_g.shape == (5, 1) and g.last_layer.weight_g.requires_grad
    # row norms of the effective weight equal the gain
    with torch.no_grad():
        g.last_layer.weight_g.fill_(2.0)
    eye = torch.eye(4)
    torch.testing.assert_close(g.last_layer(eye).T.norm(dim=1), torch.full((5,), 2.0))


def test_resolution_groups():
    v = [torch.zeros(1, 3, 8, 8)] * 2 + [torch.zeros(1, 3, 4, 4)] * 3
    assert resolution_groups(v) == [range(0, 2), range(2, 5)]


def test_multicrop_one_backbone_call_per_resolution_and_layout():
    vit = _vit()
    head = IBOTHead(48, out_dim=7, hidden_dim=16, bottleneck_dim=8)
    model = MultiCropModel(vit, head, patch_outputs=True)
    calls = []
    vit.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    views = [torch.randn(2, 3, 32, 32) for _ in range(2)] + [torch.randn(2, 3, 16, 16)] * 3
    out = model(views)
    assert calls == [4, 6]
    assert out.cls.shape == (10, 7) and out.patch.shape == (4, 64, 7)
    assert out.feat.shape == (4, 64, 48) and out.attn is None
    # view-major layout: rows 2..3 are view 1
    torch.testing.assert_close(out.cls[2:4], head(vit(views[1]).cls))
    torch.testing.assert_close(out.patch[2:4], head(vit(views[1]).patch))
    with torch.no_grad():
        attn = model(views[:2], return_attn=True).attn
    assert math.isclose(float(attn.sum()), 4.0, rel_tol=1e-5)


def _wide_block_out_of_place(block, x):
    """The WRN block as written before its ReLUs went in place (the reference)."""
    o = torch.relu(block.bn1(x))
    y = block.conv2(torch.relu(block.bn2(block.conv1(o))))
    return y + (x if block.proj is None else block.proj(o))


@pytest.mark.parametrize("train", [True, False])
def test_wrn_in_place_relus_give_equal_outputs_gradients_and_bn_statistics(train):
    import copy
    import types

    from kdray.modules.backbones import build_backbone
    from kdray.modules.cifar_zoo import _WideBlock

    torch.manual_seed(0)
    fast = build_backbone("wrn_16_2").train(train)
    ref = copy.deepcopy(fast)
    for m in ref.modules():
        if isinstance(m, _WideBlock):
            m.forward = types.MethodType(_wide_block_out_of_place, m)
    x = torch.randn(4, 3, 32, 32)
    outs, grads = [], []
    for net in (fast, ref):
        xi = x.clone().requires_grad_()
        out = net(xi)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        outs.append(out.detach())
        grads.append([xi.grad] + [p.grad for p in net.parameters()])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert all(torch.equal(a, b) for a, b in zip(fast.buffers(), ref.buffers()))
