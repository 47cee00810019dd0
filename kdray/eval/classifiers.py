"""Few-shot classifiers fitted on one episode's support set.

Every classifier has the signature ``(support (S, D), support_y (S,), query (Q, D), way, seed) ->
(Q,) predicted episode labels``; ``seed`` seeds any randomness (only ``distlinear`` has some).

- ``proto``: cosine nearest class centroid. Features are L2-normalised, averaged per class, and each
  query goes to the prototype of highest cosine similarity. SMKD's ``feature_evaluation_cos``
  averages the *raw* support features instead; the two agree whenever all features have the same
  norm, as SMKD's [CLS] ⊕ pooled-patch features (two unit vectors, norm √2) do.
- ``logreg``: multinomial logistic regression on L2-normalised features, equivalent to scikit-learn's
  ``LogisticRegression(C=1.0)`` (the RFS protocol): minimise Σ_i CE_i + ½‖W‖² (bias unpenalised) in
  float64, from zero, with full-batch L-BFGS (strong Wolfe line search). Convex and started at a
  fixed point, so the result is deterministic.
- ``distlinear``: SMKD's "classifier" mode (``fseval.distLinear``): a weight-normalised cosine
  linear layer (scale 2, or 10 above 200 classes) trained with SGD (lr 0.01, momentum 0.9, dampening
  0.9, weight decay 1e-3, batch 4) for 301 epochs; the score after the last epoch is used. About 2,100
  optimizer steps per episode: slow (SMKD ran only 1,000 episodes with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Classifier = Callable[[Tensor, Tensor, Tensor, int, int], Tensor]

LOGREG_C = 1.0          # inverse L2 strength, as sklearn's default
LOGREG_MAX_ITER = 200


@torch.no_grad()
def proto(support: Tensor, support_y: Tensor, query: Tensor, way: int, seed: int = 0) -> Tensor:
    """Cosine nearest-centroid predictions (see module docstring).

    Args:
        support: (S, D) support features.
        support_y: (S,) int64 episode labels in [0, way).
        query: (Q, D) query features.
        way: number of classes.
        seed: unused.

    Returns:
        (Q,) int64 predicted episode labels.
    """
    s = F.normalize(support.float(), dim=1)
    sums = torch.zeros(way, s.shape[1], dtype=s.dtype, device=s.device).index_add_(0, support_y, s)
    protos = F.normalize(sums, dim=1)  # the mean's 1/count cancels under normalisation
    return (F.normalize(query.float(), dim=1) @ protos.T).argmax(dim=1)


def fit_logreg(x: Tensor, y: Tensor, way: int, *, c: float = LOGREG_C,
               max_iter: int = LOGREG_MAX_ITER) -> tuple[Tensor, Tensor]:
    """Minimise Σ_i CE(W x_i + b, y_i) + ‖W‖² / (2c) with L-BFGS in float64.

    Args:
        x: (S, D) features (used as given; ``logreg`` passes them L2-normalised).
        y: (S,) int64 labels in [0, way).
        way: number of classes.
        c: inverse regularisation strength.
        max_iter: L-BFGS iteration cap.

    Returns:
        W (way, D) and b (way,), float64.
    """
    x = x.detach().double()
    w = torch.zeros(way, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(way, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y, reduction="sum") + (w * w).sum() / (2 * c)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def logreg(support: Tensor, support_y: Tensor, query: Tensor, way: int, seed: int = 0) -> Tensor:
    """Logistic-regression predictions on L2-normalised features (see ``fit_logreg``)."""
    w, b = fit_logreg(F.normalize(support.double(), dim=1), support_y, way)
    return (F.normalize(query.double(), dim=1) @ w.T + b).argmax(dim=1)


def _unit_rows(x: Tensor) -> Tensor:
    return x / (x.norm(dim=1, keepdim=True) + 1e-5)  # fseval.distLinear's epsilon


def distlinear(support: Tensor, support_y: Tensor, query: Tensor, way: int, seed: int = 0,
               *, epochs: int = 301, batch_size: int = 4) -> Tensor:
    """SMKD's cosine linear classifier trained on the support set (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    s, q = support.float(), query.float()
    d = s.shape[1]
    bound = 1.0 / math.sqrt(d)  # nn.Linear's default init range
    v0 = (torch.rand(way, d, generator=gen) * 2 - 1) * bound
    v = v0.to(s.device).requires_grad_(True)
    g = v0.norm(dim=1).to(s.device).detach().requires_grad_(True)  # weight norm starts at ‖v‖
    scale = 2.0 if way <= 200 else 10.0

    def scores(x: Tensor) -> Tensor:
        weight = g[:, None] * v / v.norm(dim=1, keepdim=True)
        return scale * (_unit_rows(x) @ weight.T)

    opt = torch.optim.SGD([v, g], lr=0.01, momentum=0.9, dampening=0.9, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(s), generator=gen).to(s.device)
            for batch in order.split(batch_size):
                opt.zero_grad()
                F.cross_entropy(scores(s[batch]), support_y[batch]).backward()
                opt.step()
    with torch.no_grad():
        return scores(q).argmax(dim=1)


CLASSIFIERS: dict[str, Classifier] = {"proto": proto, "logreg": logreg, "distlinear": distlinear}
