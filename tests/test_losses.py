"""The shared temperature-scaled KL (every reduction) and the loss-weighting convention, against
hand computations on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdray.modules.losses import kl_div, term_weights, weighted_sum

S = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, 0.0, 0.0]]
T = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
TAU = 2.0


def _kl(a, b, tau=TAU):  # KL(softmax(b / tau) || softmax(a / tau)) in plain numpy
    pa = np.exp(np.array(a) / tau) / np.exp(np.array(a) / tau).sum()
    pb = np.exp(np.array(b) / tau) / np.exp(np.array(b) / tau).sum()
    return float((pb * np.log(pb / pa)).sum())


ROWS = [_kl(a, b) for a, b in zip(S, T)]


def test_kl_none_is_per_row_without_tau_squared():
    got = kl_div(torch.tensor(S), torch.tensor(T), TAU, reduction="none")
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), ROWS, rtol=1e-5)


def test_kl_batchmean_and_scale():
    s, t = torch.tensor(S), torch.tensor(T)
    assert kl_div(s, t, TAU).item() == pytest.approx(TAU**2 * sum(ROWS) / 3, rel=1e-5)
    assert kl_div(s, t, TAU, scale_tau2=False).item() == pytest.approx(sum(ROWS) / 3, rel=1e-5)
    assert kl_div(t, t, TAU).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_masked_averages_kept_rows_and_is_zero_but_connected_when_none():
    s, t = torch.tensor(S, requires_grad=True), torch.tensor(T)
    keep = torch.tensor([True, False, True])
    got = kl_div(s, t, TAU, reduction="masked", mask=keep)
    assert got.item() == pytest.approx(TAU**2 * (ROWS[0] + ROWS[2]) / 2, rel=1e-5)
    none = kl_div(s, t, TAU, reduction="masked", mask=torch.zeros(3, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))
    with pytest.raises(ValueError, match="needs a mask"):
        kl_div(s, t, TAU, reduction="masked")


def test_kl_sum_over_a_dense_map_with_class_dim_1():
    # (B=1, C=3, h=1, w=3): the rows of S/T are the three positions
    s = torch.tensor(S).T.reshape(1, 3, 1, 3)
    t = torch.tensor(T).T.reshape(1, 3, 1, 3)
    got = kl_div(s, t, TAU, reduction="sum", dim=1)
    assert got.item() == pytest.approx(TAU**2 * sum(ROWS), rel=1e-5)


def test_kl_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        kl_div(torch.tensor(S), torch.tensor(T), reduction="mean")


def test_weighted_sum_uses_w_fields_in_term_order():
    class Cfg:
        w_ce, w_kd = 0.25, 2.0
    terms = {"ce": torch.tensor(4.0), "kd": torch.tensor(3.0)}
    assert term_weights(Cfg(), terms) == {"ce": 0.25, "kd": 2.0}
    assert weighted_sum(terms, term_weights(Cfg(), terms)).item() == 7.0
    with pytest.raises(ValueError):
        weighted_sum({}, {})
