"""Block masks (kdray.modules.masking): ratio, determinism, blockiness, per-image probability."""

from __future__ import annotations

import pytest
import torch

from kdray.modules.masking import batch_masks, block_mask, default_min_patches, image_mask


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@pytest.mark.parametrize("h,w", [(8, 8), (14, 14), (7, 5)])
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.3, 0.45, 0.5, 0.75])
def test_block_mask_hits_ratio(h: int, w: int, ratio: float) -> None:
    target = int(ratio * h * w + 0.5)
    for seed in range(20):
        m = block_mask(h, w, ratio, _gen(seed), min_patches=default_min_patches(h, w))
        assert m.shape == (h, w) and m.dtype == torch.bool
        # the contract is +-1 patch; the implementation tops up, so it is exact
        assert abs(int(m.sum()) - target) <= 1
        assert int(m.sum()) == target


def test_block_mask_extremes() -> None:
    assert not block_mask(8, 8, 0.0, _gen(0)).any()
    assert block_mask(8, 8, 1.0, _gen(0)).all()
    with pytest.raises(ValueError):
        block_mask(8, 8, 1.5, _gen(0))


def test_block_mask_deterministic_per_seed() -> None:
    a = block_mask(14, 14, 0.4, _gen(123))
    b = block_mask(14, 14, 0.4, _gen(123))
    assert torch.equal(a, b)
    others = [block_mask(14, 14, 0.4, _gen(s)) for s in range(1, 6)]
    assert any(not torch.equal(a, o) for o in others)


def _share_with_masked_neighbour(m: torch.Tensor) -> float:
    n = torch.zeros_like(m)
    n[1:] |= m[:-1]
    n[:-1] |= m[1:]
    n[:, 1:] |= m[:, :-1]
    n[:, :-1] |= m[:, 1:]
    return float((n & m).sum() / m.sum())


def test_block_mask_is_blocky() -> None:
    # For i.i.d. random masking at ratio 0.3, an interior masked patch has a masked 4-neighbour
    # with probability 1 - 0.7**4 = 0.76; block masks put nearly every masked patch in a block.
    share = sum(_share_with_masked_neighbour(block_mask(14, 14, 0.3, _gen(s), min_patches=16))
                for s in range(30)) / 30
    assert share > 0.95


def test_image_mask_probability_and_range() -> None:
    g = _gen(7)
    assert not image_mask(8, 8, prob=0.0, ratio_range=(0.1, 0.5), generator=g).any()
    counts = [int(image_mask(8, 8, prob=1.0, ratio_range=(0.1, 0.5), generator=g).sum())
              for _ in range(200)]
    # ratio ~ U(0.1, 0.5) on 64 patches: counts in [round(6.4), round(32)] = [6, 32]
    assert min(counts) >= 6 and max(counts) <= 32
    assert max(counts) - min(counts) > 15  # the ratio really varies


def test_batch_masks_share_of_masked_images() -> None:
    m = batch_masks(400, 8, 8, prob=0.5, ratio_range=(0.2, 0.2), generator=_gen(3))
    assert m.shape == (400, 8, 8)
    masked = m.flatten(1).any(1)
    # Binomial(400, 0.5): std 10 images, so +-50 is a 5-sigma band
    assert 150 <= int(masked.sum()) <= 250
    assert set(m.flatten(1).sum(1)[masked].tolist()) == {13}  # round(0.2 * 64) = 13
    again = batch_masks(400, 8, 8, prob=0.5, ratio_range=(0.2, 0.2), generator=_gen(3))
    assert torch.equal(m, again)


def test_default_min_patches() -> None:
    assert default_min_patches(14, 14) == 16  # iBOT's value on ViT-S/16 at 224 px
    assert default_min_patches(8, 8) == 4
    assert default_min_patches(2, 2) == 1
