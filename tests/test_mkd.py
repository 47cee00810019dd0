"""MKD building blocks: grid masking + masked conv, adaptive decoder, L_feat / GcBlock losses and
COCO box evaluation. Expected numbers are computed by hand or by independent formulas."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import gloo_group
from torch import nn
from torchvision.models import resnet18

from kdray.eval.coco_metric import (
    CocoBoxEvaluator,
    coco_box_metrics,
    evaluate_detections,
    to_coco_results,
)
from kdray.methods.mkd.decoder import AdaptiveDecoder, LevelAdapter, sincos_2d
from kdray.methods.mkd.losses import GcBlock, GlobalRelationLoss, feat_loss
from kdray.methods.mkd.mask import (
    MaskedConvHooks,
    VisibleBatchNorm2d,
    convert_visible_bn,
    keep_fraction,
    level_mask,
    random_mask,
    resize_mask,
    stage_masks,
)

torch.set_num_threads(1)
DATA = Path(__file__).parents[1].parent / "shared" / "data"
# A 100 x 160 image: H is not a multiple of 32. ResNet maps have ceil(H / r) rows at stride r.
H, W = 100, 160
SIZES = {1: (100, 160), 2: (50, 80), 4: (25, 40), 8: (13, 20), 16: (7, 10), 32: (4, 5)}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pixel_keep(mask: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Independent reference: position i at stride r covers pixel i*r, in grid cell i*r // 32."""
    rows = torch.arange(size[0]) * stride // 32
    cols = torch.arange(size[1]) * stride // 32
    return ~mask[:, :, rows][:, :, :, cols]


# ------------------------------------------------------------------ masking
def test_random_mask_exact_ratio_and_seeded() -> None:
    m = random_mask(6, H, W, 0.5, generator=_gen(1))
    assert m.shape == (6, 1, 4, 5) and m.dtype == torch.bool
    assert m.flatten(1).sum(1).tolist() == [10] * 6
    assert torch.equal(keep_fraction(m), torch.full((6,), 0.5))
    assert torch.equal(m, random_mask(6, H, W, 0.5, generator=_gen(1)))
    assert not torch.equal(m, random_mask(6, H, W, 0.5, generator=_gen(2)))
    assert len({tuple(x.flatten().tolist()) for x in m}) > 1  # drawn per image
    assert random_mask(2, H, W, 0.75, generator=_gen()).flatten(1).sum(1).tolist() == [15, 15]
    assert not random_mask(2, H, W, 0.0, generator=_gen()).any()
    assert random_mask(2, H, W, 1.0, generator=_gen()).all()
    with pytest.raises(ValueError):
        random_mask(1, H, W, 1.5)


def test_mask_upsampling_consistent_across_stages() -> None:
    m = random_mask(3, H, W, 0.4, generator=_gen(3))
    ups = stage_masks(m, [SIZES[r] for r in (4, 8, 16, 32)])
    for r, up in zip((4, 8, 16, 32), ups):
        assert up.shape == (3, 1, *SIZES[r])
        assert torch.equal(~up, _pixel_keep(m, r, SIZES[r]))           # cell borders aligned
        f = 32 // r
        assert torch.equal(up[..., ::f, ::f], m)                        # subsampling recovers it
        pooled = F.max_pool2d(up.float(), f, ceil_mode=True)            # each block is constant
        assert torch.equal(pooled.bool(), m)
        assert torch.equal(-F.max_pool2d(-up.float(), f, ceil_mode=True), m.float())


def test_level_mask_fine_and_coarse_levels() -> None:
    m = random_mask(2, H, W, 0.5, generator=_gen(9))  # 4 x 5 grid; P6 is 2 x 3, P7 is 1 x 2
    assert torch.equal(level_mask(m, SIZES[8]), (~_pixel_keep(m, 8, SIZES[8])).float())
    for f, size in ((2, (2, 3)), (4, (1, 2))):
        got = level_mask(m, size)
        for b in range(2):
            for i in range(size[0]):
                for j in range(size[1]):
                    cells = m[b, 0, f * i:f * i + f, f * j:f * j + f].float()  # clipped at border
                    assert got[b, 0, i, j] == pytest.approx(cells.mean().item())
    with pytest.raises(ValueError):
        resize_mask(m, (2, 3))


def test_masked_1x1_and_3x3_conv() -> None:
    mask = torch.tensor([[True, False], [False, True]]).view(1, 1, 2, 2)
    x = torch.randn(1, 3, 64, 64, generator=_gen())
    for k in (1, 3):
        conv = nn.Conv2d(3, 4, k, padding=k // 2, bias=False)
        hooks = MaskedConvHooks(conv)
        with hooks.masked(mask):
            y = conv(x)
        zero = (y == 0).all(dim=1)[0]
        q = 32 - k // 2  # 3x3: a 1-pixel border of each masked quadrant sees the visible one
        assert zero[:q, :q].all() and zero[32 + k // 2:, 32 + k // 2:].all()
        assert not zero[:32, 32:].any() and not zero[32:, :32].any()
        assert zero.sum() == 2 * q * q
        assert hooks._keep is None  # cleared after the block
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, padding=k // 2))


def _conv_io(model: nn.Module, x: torch.Tensor, hooks: MaskedConvHooks, mask: torch.Tensor):
    rec = []
    handles = [c.register_forward_hook(lambda mod, a, out: rec.append((mod, a[0].shape, out)))
               for c in hooks.convs]
    with hooks.masked(mask):
        model(x)
    for h in handles:
        h.remove()
    return rec


def test_masked_resnet_conv_outputs_zero_where_receptive_field_masked() -> None:
    model = resnet18(num_classes=4).eval()
    hooks = MaskedConvHooks(model)
    mask = random_mask(2, H, W, 0.5, generator=_gen(4))
    x = torch.randn(2, 3, H, W, generator=_gen(5))
    rec = _conv_io(model, x, hooks, mask)
    assert len(rec) == 20  # every conv of resnet18 (incl. the 3 downsample 1x1) was masked
    stride_of, n_blind = {v: k for k, v in SIZES.items()}, 0
    for conv, in_shape, out in rec:
        keep = _pixel_keep(mask, stride_of[tuple(in_shape[-2:])], in_shape[-2:]).float()
        sees_visible = F.max_pool2d(keep, conv.kernel_size, conv.stride, conv.padding)
        blind = (sees_visible == 0).expand_as(out)
        assert (out[blind] == 0).all()  # resnet convs have no bias
        assert (out[~blind] != 0).float().mean() > 0.5
        n_blind += bool(blind.any())
    assert n_blind >= 15  # all but (some of) the 3x3 convs on the 4 x 5 stride-32 grid


def test_all_ones_mask_changes_nothing_and_hooks_remove() -> None:
    model = resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, H, W, generator=_gen(6))
    with torch.no_grad():
        ref = model(x)
        hooks = MaskedConvHooks(model)
        with hooks.masked(random_mask(2, H, W, 0.0)):
            same = model(x)
        with hooks.masked(random_mask(2, H, W, 0.5, generator=_gen())):
            masked = model(x)
        hooks.set_mask(random_mask(2, H, W, 0.5, generator=_gen()))
        hooks.remove()
        after = model(x)
    assert torch.equal(same, ref) and torch.equal(after, ref)
    assert not torch.allclose(masked, ref)
    assert all(len(c._forward_pre_hooks) == 0 for c in model.modules() if isinstance(c, nn.Conv2d))


def test_visible_batchnorm_uses_visible_positions_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
    plain = copy.deepcopy(model)
    convert_visible_bn(model)
    assert type(model[1]) is VisibleBatchNorm2d
    hooks = MaskedConvHooks(model)
    x = torch.randn(2, 3, 64, 96, generator=_gen(10))
    assert torch.equal(model(x), plain(x))  # no mask set: plain BatchNorm
    assert torch.equal(model[1].running_var, plain[1].running_var)
    mask = random_mask(2, 64, 96, 0.5, generator=_gen(11))
    with hooks.masked(mask):
        y = model(x)
    z = F.conv2d(x * (~resize_mask(mask, (64, 96))).float(), plain[0].weight, padding=1)
    vis = ~resize_mask(mask, (64, 96)).expand_as(z)  # (B, C, H, W)
    rows = z.permute(1, 0, 2, 3)[vis.permute(1, 0, 2, 3)].view(4, -1).t()  # (N_visible, C)
    rm, rv = plain[1].running_mean.clone(), plain[1].running_var.clone()
    ref = F.batch_norm(rows, rm, rv, plain[1].weight, plain[1].bias, training=True, momentum=0.1)
    torch.testing.assert_close(y.permute(1, 0, 2, 3)[vis.permute(1, 0, 2, 3)].view(4, -1).t(), ref)
    torch.testing.assert_close(model[1].running_mean, rm)
    torch.testing.assert_close(model[1].running_var, rv)
    hooks.remove()
    assert model[1].mask_source is None
    net = convert_visible_bn(resnet18())
    assert sum(type(m) is VisibleBatchNorm2d for m in net.modules()) == 20
    assert not any(type(m) is nn.BatchNorm2d for m in net.modules())


# ------------------------------------------------------------------ decoder
LEVEL_STRIDES = (8, 16, 32, 64, 128)


def _fpn(b: int, h: int, w: int, c: int, seed: int = 0) -> list[torch.Tensor]:
    g, feats, size = _gen(seed), [], (math.ceil(h / 8), math.ceil(w / 8))
    for _ in LEVEL_STRIDES:  # stride-2 convs: each level has ceil(previous / 2) positions
        feats.append(torch.randn(b, c, *size, generator=g))
        size = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
    return feats


@pytest.mark.parametrize("hw,grid", [((96, 160), (3, 5)), ((100, 160), (4, 5))])
def test_decoder_round_trip_shapes(hw, grid) -> None:
    dec = AdaptiveDecoder(strides=LEVEL_STRIDES, in_channels=8, out_channels=12, dim=16,
                          depth=1, heads=2)
    feats = _fpn(2, *hw, 8)
    mask = random_mask(2, *hw, 0.5, generator=_gen())
    assert mask.shape[-2:] == grid
    for lvl, f in zip(dec.levels, feats):
        assert lvl.align(f, grid).shape == (2, 16, *grid)
    out = dec(feats, mask)
    assert [o.shape for o in out] == [(2, 12, *f.shape[-2:]) for f in feats]
    if hw == (96, 160):
        assert [tuple(f.shape[-2:]) for f in feats] == [(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)]


def test_sam_upsamples_coarse_and_srm_pixel_shuffles_fine() -> None:
    coarse = LevelAdapter(stride=64, in_channels=2, out_channels=2, dim=2)
    with torch.no_grad():
        coarse.phi.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        coarse.phi.bias.zero_()
    p6 = torch.arange(12.0).view(1, 2, 2, 3)
    got = coarse.align(p6, (3, 5))  # grid of a 96 x 160 image
    idx_r, idx_c = torch.arange(3) // 2, torch.arange(5) // 2
    assert torch.equal(got, p6[:, :, idx_r][:, :, :, idx_c])
    fine = LevelAdapter(stride=16, in_channels=2, out_channels=2, dim=8)  # p = 2, p^2 C = 8
    with torch.no_grad():
        fine.srm.weight.copy_(torch.eye(8))
        fine.srm.bias.zero_()
    tokens = torch.randn(1, 6, 8, generator=_gen())  # 2 x 3 grid
    out = fine.recover(tokens, (2, 3), (4, 5))  # odd width: last column cropped
    for c, a, b, i, j in [(0, 0, 0, 0, 0), (1, 1, 2, 1, 0), (0, 1, 1, 0, 1), (1, 0, 1, 1, 1)]:
        if b * 2 + j < 5:
            assert out[0, c, a * 2 + i, b * 2 + j] == tokens[0, a * 3 + b, c * 4 + i * 2 + j]
    assert out.shape == (1, 2, 4, 5)


def test_mask_token_replaces_exactly_masked_positions() -> None:
    lvl = LevelAdapter(stride=32, in_channels=4, out_channels=4, dim=4)
    x = torch.randn(2, 4, 3, 5, generator=_gen())
    mask = random_mask(2, 96, 160, 0.4, generator=_gen(7))
    tok = lvl.insert_mask_token(x, mask)
    flat_mask, flat_x = mask.flatten(1), x.flatten(2).transpose(1, 2)
    assert torch.equal(tok[flat_mask], lvl.mask_token.detach().expand(int(flat_mask.sum()), 4))
    assert torch.equal(tok[~flat_mask], flat_x[~flat_mask])


def test_decoder_ignores_masked_content_of_p3_to_p5() -> None:
    dec = AdaptiveDecoder(strides=LEVEL_STRIDES, in_channels=4, out_channels=4, dim=8,
                          depth=2, heads=2).eval()
    feats = _fpn(2, H, W, 4, seed=1)
    mask = random_mask(2, H, W, 0.5, generator=_gen(8))
    other = [f.clone() for f in feats]
    for f in other[:3]:  # P3-P5: every position lies in one grid cell
        m = resize_mask(mask, f.shape[-2:]).expand_as(f)
        f[m] = 100.0
    with torch.no_grad():
        ref, same = dec(feats, mask), dec(other, mask)
        other[0][~resize_mask(mask, other[0].shape[-2:]).expand_as(other[0])] += 1.0
        changed = dec(other, mask)
    assert all(torch.equal(a, b) for a, b in zip(ref, same))
    assert not torch.allclose(changed[0], ref[0])  # levels are separate sequences


def test_decoder_depth_width_and_options() -> None:
    dec = AdaptiveDecoder(strides=(8, 16, 32), in_channels=4, out_channels=6, dim=24, depth=3,
                          heads=4, shared_layers=False, pos_embed="learned", learned_grid=(2, 2))
    assert len(dec.blocks) == 3 and all(len(b) == 3 for b in dec.blocks)
    assert dec.blocks[0][0].linear1.in_features == 24 and dec.levels[2].sam.out_channels == 24
    shared = AdaptiveDecoder(strides=(8, 16, 32), in_channels=4, out_channels=6, dim=24, depth=1,
                             heads=4, pos_embed="none")
    assert len(shared.blocks) == 1 and len(shared.blocks[0]) == 1
    assert shared.levels[2].sam.__class__.__name__ == "Conv2d"  # dim != C_T at stride 32
    feats = [torch.randn(1, 4, 12, 20), torch.randn(1, 4, 6, 10), torch.randn(1, 4, 3, 5)]
    mask = random_mask(1, 96, 160, 0.5, generator=_gen())
    for d in (dec, shared):
        out = d(feats, mask)
        out[0].sum().backward()
    assert dec.pos_table.grad is not None
    with pytest.raises(ValueError):
        AdaptiveDecoder(in_channels=4, pos_embed="rope")


def test_sincos_2d_by_hand() -> None:
    pe = sincos_2d(2, 2, 4)  # omega = [1]: rows [sin r, cos r], cols [sin c, cos c]
    s1, c1 = math.sin(1.0), math.cos(1.0)
    expect = torch.tensor([[0, 1, 0, 1], [0, 1, s1, c1], [s1, c1, 0, 1], [s1, c1, s1, c1]])
    torch.testing.assert_close(pe, expect.float())


# ------------------------------------------------------------------ losses
def _std(vals: list[float], eps: float = 1e-6) -> list[float]:
    mu = sum(vals) / len(vals)
    var = sum((v - mu) ** 2 for v in vals) / len(vals)
    return [(v - mu) / math.sqrt(var + eps) for v in vals]


def test_feat_loss_by_hand() -> None:
    # one level, B=1, C=2, 1 x 2 positions: t = [[1, 3], [0, 2]], s = [[2, 2], [1, 5]]
    t = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])
    s = torch.tensor([[[[2.0, 2.0]], [[1.0, 5.0]]]])
    raw = ((1 - 2) ** 2 + (3 - 2) ** 2 + (0 - 1) ** 2 + (2 - 5) ** 2) / (2 * 4)
    assert feat_loss([t], [s], norm="none").item() == pytest.approx(raw)
    assert feat_loss([t, 2 * t], [s, 2 * s], norm="none").item() == pytest.approx(5 * raw)
    # "channel": each channel over its positions; s channel 0 is constant -> zeros
    tc = _std([1, 3]) + _std([0, 2])
    sc = [0.0, 0.0] + _std([1, 5])
    chan = sum((a - b) ** 2 for a, b in zip(tc, sc)) / 8
    assert feat_loss([t], [s], norm="channel").item() == pytest.approx(chan, rel=1e-6)
    # "layernorm": each position over its channels; order (c0p0, c0p1, c1p0, c1p1)
    t0, t1, s0, s1 = _std([1, 0]), _std([3, 2]), _std([2, 1]), _std([2, 5])
    ln = ((t0[0] - s0[0]) ** 2 + (t1[0] - s1[0]) ** 2 + (t0[1] - s0[1]) ** 2
          + (t1[1] - s1[1]) ** 2) / 8
    assert feat_loss([t], [s], norm="layernorm").item() == pytest.approx(ln, rel=1e-6)
    # masked-only, grid 1 x 2 with position 1 masked: sum over that position / (2 C * 1)
    mask = torch.tensor([[[[False, True]]]])
    masked = ((3 - 2) ** 2 + (2 - 5) ** 2) / (2 * 2)
    assert feat_loss([t], [s], mask=mask, masked_only=True,
                     norm="none").item() == pytest.approx(masked)
    # a coarser (P6-like) 1 x 1 level over that grid: weight 1/2 -> (1/2 * sq) / (2 C * 1/2)
    tp, sp = torch.tensor([[[[1.0]], [[2.0]]]]), torch.tensor([[[[0.0]], [[0.0]]]])
    assert level_mask(mask, (1, 1)).item() == 0.5
    assert feat_loss([tp], [sp], mask=mask, masked_only=True,
                     norm="none").item() == pytest.approx((1 + 4) / 4)


def _gc_by_hand(x: list[list[float]], wk: list[float], w1: list[list[float]], b1: list[float],
                w2: list[list[float]], b2: list[float]) -> list[list[float]]:
    """x[c][j]; GcBlock with LN weight 1, bias 0, eps 1e-5 (PyTorch LayerNorm defaults)."""
    logits = [sum(wk[c] * x[c][j] for c in range(len(x))) for j in range(len(x[0]))]
    z = [math.exp(v) for v in logits]
    alpha = [v / sum(z) for v in z]
    ctx = [sum(alpha[j] * x[c][j] for j in range(len(alpha))) for c in range(len(x))]
    v = [sum(w1[h][c] * ctx[c] for c in range(len(ctx))) + b1[h] for h in range(len(w1))]
    v = [max(0.0, a) for a in _std(v, eps=1e-5)]
    add = [sum(w2[c][h] * v[h] for h in range(len(v))) + b2[c] for c in range(len(w2))]
    return [[x[c][j] + add[c] for j in range(len(x[0]))] for c in range(len(x))]


def test_gcblock_by_hand_and_zero_init_identity() -> None:
    block = GcBlock(4)
    y = torch.randn(2, 4, 3, 5, generator=_gen())
    assert torch.equal(block(y), y)  # last conv zero-initialised
    x = [[0.5, -1.0, 2.0], [1.0, 0.0, -0.5], [0.2, 0.3, 0.1], [-1.0, 1.5, 0.0]]
    wk, w1, b1 = [0.3, -0.2, 0.5, 0.1], [[1, 0, -1, 0.5], [0.2, 0.4, 0, -0.3]], [0.1, -0.2]
    w2, b2 = [[1, -1], [0.5, 2], [0, 1], [-1, 0.3]], [0.0, 0.1, -0.1, 0.2]
    with torch.no_grad():
        block.key.weight.copy_(torch.tensor(wk).view(1, 4, 1, 1))
        block.value[0].weight.copy_(torch.tensor(w1).view(2, 4, 1, 1))
        block.value[0].bias.copy_(torch.tensor(b1))
        block.value[3].weight.copy_(torch.tensor(w2).view(4, 2, 1, 1))
        block.value[3].bias.copy_(torch.tensor(b2))
    got = block(torch.tensor(x).view(1, 4, 1, 3))[0, :, 0]
    torch.testing.assert_close(got, torch.tensor(_gc_by_hand(x, wk, w1, b1, w2, b2)))


def test_global_loss_scale_and_gradients_reach_student_side_only() -> None:
    loss_fn = GlobalRelationLoss(channels=8, num_levels=2)  # LN over 4 hidden units
    t = [torch.randn(3, 8, 4, 5, generator=_gen(1), requires_grad=True) for _ in range(2)]
    s = [torch.randn(3, 8, 4, 5, generator=_gen(2), requires_grad=True) for _ in range(2)]
    init = sum(((a - b) ** 2).sum() for a, b in zip(t, s)) / 3  # identity blocks: FGD sum / B
    assert loss_fn(t, s).item() == pytest.approx(init.item(), rel=1e-6)
    for blk in list(loss_fn.teacher_blocks) + list(loss_fn.student_blocks):
        nn.init.normal_(blk.value[3].weight, std=0.1)
    total = loss_fn(t, s) + feat_loss(t, s)
    total.backward()
    assert all(x.grad is None for x in t)
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    for side in (loss_fn.teacher_blocks, loss_fn.student_blocks):
        for name, p in side.named_parameters():
            assert p.grad is not None, name
            # softmax is shift-invariant, so W_k's bias only gets round-off gradient
            assert name.endswith("key.bias") or p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------ COCO evaluation
def _gt(boxes_per_image: dict[int, list[tuple[float, float, float, float, int]]]) -> dict:
    """COCO dict from {image_id: [(x, y, w, h, category_id), ...]} (non-crowd, area = w h)."""
    anns, images = [], []
    for img, boxes in boxes_per_image.items():
        images.append({"id": img, "width": 640, "height": 480, "file_name": f"{img}.jpg"})
        for x, y, w, h, cat in boxes:
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": str(i)} for i in (1, 2, 3)]}


def _det(img: int, boxes_xywh: list, scores: list, labels: list) -> dict:
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes_xywh]).view(-1, 4)
    return {"image_id": img, "boxes": xyxy, "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


GT3 = {1: [(10, 10, 20, 20, 1), (100, 100, 60, 50, 2)], 2: [(0, 0, 200, 150, 1)],
       3: [(300, 200, 25, 30, 3), (50, 60, 100, 90, 2)]}


def test_coco_perfect_detections_give_ap_one() -> None:
    dets = [_det(i, [b[:4] for b in bs], [0.9] * len(bs), [b[4] for b in bs])
            for i, bs in GT3.items()]
    res = evaluate_detections(dets, _gt(GT3))
    assert res == pytest.approx(dict.fromkeys(
        ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"), 1.0), abs=1e-12)  # COCO means floats


def test_coco_known_answers() -> None:
    gt = _gt({1: [(0, 0, 100, 100, 1)]})  # area 10000 > 96^2: large
    iou62 = evaluate_detections([_det(1, [(0, 0, 100, 62)], [0.9], [1])], gt)
    # IoU 0.62 passes thresholds 0.50, 0.55, 0.60 of ten -> AP 0.3
    assert iou62["AP50"] == pytest.approx(1.0) and iou62["AP75"] == 0.0
    assert iou62["AP"] == pytest.approx(0.3) and iou62["AP_L"] == pytest.approx(0.3)
    assert iou62["AP_S"] == -1.0 and iou62["AP_M"] == -1.0
    # a false positive ranked above the true positive: precision 1/2 at recall 1 -> AP 0.5
    fp_first = evaluate_detections([_det(1, [(300, 300, 50, 50), (0, 0, 100, 100)], [0.9, 0.8],
                                         [1, 1])], gt)
    assert fp_first["AP"] == pytest.approx(0.5) and fp_first["AP50"] == pytest.approx(0.5)
    fp_last = evaluate_detections([_det(1, [(300, 300, 50, 50), (0, 0, 100, 100)], [0.7, 0.8],
                                        [1, 1])], gt)
    assert fp_last["AP"] == pytest.approx(1.0)
    assert evaluate_detections([], gt)["AP"] == 0.0


def test_coco_label_mapping_and_xywh() -> None:
    recs = to_coco_results([_det(5, [(1, 2, 3, 4)], [0.5], [0])], label_to_cat=[7])
    assert recs == [{"image_id": 5, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]


def _imperfect() -> list[dict]:
    return [_det(1, [(10, 10, 20, 18), (400, 10, 30, 30)], [0.9, 0.95], [1, 2]),
            _det(2, [(5, 0, 200, 150)], [0.6], [1]),
            _det(3, [(300, 200, 25, 30), (50, 60, 90, 90), (48, 60, 100, 92)], [0.8, 0.7, 0.3],
                 [3, 2, 2])]


def test_coco_evaluator_accumulates_batches() -> None:
    ev, dets = CocoBoxEvaluator(_gt(GT3)), _imperfect()
    ev.update([1, 2], [{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets[:2]])
    ev.update([3], [{k: dets[2][k] for k in ("boxes", "scores", "labels")}])
    assert ev.compute() == evaluate_detections(dets, _gt(GT3))
    ev.update([1], [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": []}])
    assert ev.compute() == evaluate_detections(dets, _gt(GT3))  # a repeated image counts once


def _ddp_worker(rank: int, init: str, out: str) -> None:
    with gloo_group(rank, init):
        dets = _imperfect()
        shard = [dets[0], dets[2]] if rank == 0 else [dets[1], dets[0]]  # rank 1 pads with img 1
        res = evaluate_detections(shard, _gt(GT3))
        Path(out, f"rank{rank}.json").write_text(json.dumps(res))


def test_coco_ddp_gather_equals_single_process(tmp_path: Path) -> None:
    single = evaluate_detections(_imperfect(), _gt(GT3))
    assert 0.0 < single["AP"] < 1.0
    mp.spawn(_ddp_worker, args=(f"file://{tmp_path}/init", str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == single


def test_coco128_ground_truth_as_detections() -> None:
    path = DATA / "coco128" / "annotations" / "instances_train2017.json"
    assert path.is_file(), f"shared data missing: {path}"
    gt = json.loads(path.read_text())
    anns = [a for a in gt["annotations"] if not a["iscrowd"]]
    by_img: dict[int, list] = {}
    for a in anns:
        by_img.setdefault(a["image_id"], []).append(a)
    dets = [_det(i, [a["bbox"] for a in al], [1.0] * len(al), [a["category_id"] for a in al])
            for i, al in by_img.items()]
    assert len(gt["images"]) == 128 and len(anns) == 929
    res = evaluate_detections(dets, gt)
    assert res == pytest.approx(dict.fromkeys(res, 1.0), abs=1e-12) and len(res) == 6
    # dropping every detection of one category zeroes its AP: AP = (K - 1) / K
    cats = {a["category_id"] for a in anns}
    drop = min(cats)
    fewer = [{k: v if k == "image_id" else v[d["labels"] != drop] for k, v in d.items()}
             for d in dets]
    res = coco_box_metrics(to_coco_results(fewer), gt)
    assert res["AP"] == pytest.approx((len(cats) - 1) / len(cats))
    assert res["AP50"] == pytest.approx((len(cats) - 1) / len(cats))
