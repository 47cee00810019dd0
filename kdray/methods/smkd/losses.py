"""SMKD / iBOT loss terms as pure functions (Lin et al., CVPR 2023, arXiv:2303.15466).

Conventions: G global views, V = G + L views in all, B images, N patches, K prototypes, D features.
Teacher inputs are probabilities (centred and sharpened by the caller); student inputs are
log-probabilities (log-softmax of logits / student temperature). H(p, q) = -sum_k p_k log q_k.
Each function returns a 0-dim tensor; with no valid term it returns a zero that is still attached
to the student graph (so DDP sees every parameter used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _zero(x: Tensor) -> Tensor:
    return x.sum() * 0.0


def global_pair_mask(labels: Tensor, n_global: int, *, same_image: bool) -> Tensor:
    """Valid (teacher view q, image i, student view v, image j) pairs among the global views.

    A pair is valid when y_i == y_j and it is not the same view of the same image; with
    `same_image=False` every i == j pair is dropped as well (the released SMKD code).

    Args:
        labels: (B,) class ids; pass `arange(B)` for label-free (self-supervised) pairs.
        n_global: G.
        same_image: keep i == j pairs from different views (Eq. 3 reduces to Eq. 1 for x = y).

    Returns:
        (G, B, G, B) bool.
    """
    b = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(b, dtype=torch.bool, device=labels.device)
    view_eq = torch.eye(n_global, dtype=torch.bool, device=labels.device)
    keep = same[None, :, None, :] & ~(eye[None, :, None, :] & view_eq[:, None, :, None])
    if not same_image:
        keep = keep & ~eye[None, :, None, :]
    return keep


def cls_pair_mask(labels: Tensor, n_global: int, n_views: int, *, same_image: bool) -> Tensor:
    """Valid [CLS] pairs: global-global pairs as in `global_pair_mask`, global-local pairs only
    for the same image (local crops are never matched across images, as in the SMKD code).

    Returns:
        (G, B, V, B) bool.
    """
    b = labels.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=labels.device)
    local = eye[None, :, None, :].expand(n_global, b, n_views - n_global, b)
    return torch.cat([global_pair_mask(labels, n_global, same_image=same_image), local], dim=2)


def cls_loss(t_probs: Tensor, s_logp: Tensor, pairs: Tensor) -> Tensor:
    """[CLS] distillation, Eq. 1 (pairs = same image, other view) and Eq. 3 (same class):
    the mean of H(P_t(x_i^q), P_s(x_j^v)) over all valid pairs.

    Args:
        t_probs: (G, B, K) teacher probabilities of the global views.
        s_logp: (V, B, K) student log-probabilities of all views.
        pairs: (G, B, V, B) bool, from `cls_pair_mask`.
    """
    q, i, v, j = pairs.nonzero().unbind(1)
    if q.numel() == 0:
        return _zero(s_logp)
    # elementwise rather than a matmul, so the sum stays in float32 under autocast
    return -(t_probs[q, i] * s_logp[v, j]).sum(-1).mean()


def mim_loss(t_probs: Tensor, s_logp: Tensor, masks: Tensor) -> Tensor:
    """iBOT masked image modelling, Eq. 2: per image, the mean over masked patches of
    H(P_t(x)_k, P_s(x_hat)_k) (0 for an unmasked image), then the mean over images and views.

    Args:
        t_probs: (G, B, N, K) teacher patch probabilities (unmasked views).
        s_logp: (G, B, N, K) student patch log-probabilities (masked views, same view index).
        masks: (G, B, N) bool, True = masked.
    """
    ce = -(t_probs * s_logp).sum(-1)                                    # (G, B, N)
    m = masks.to(ce.dtype)
    return ((ce * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()


def patch_loss_paper(t_probs: Tensor, s_logp: Tensor, t_feat: Tensor, s_feat: Tensor,
                     t_weight: Tensor, pairs: Tensor, *, chunk: int = 16) -> Tensor:
    """Cross-image patch matching, Eq. 4-5 as written in the paper.

    For each valid pair (teacher view t, image i; student view s, image j), every teacher patch k
    is matched to k+ = argmax_l cos(f_t(i, k), f_s(j, l)) over all student patches (backbone
    features; no gradient through the matching) and the pair scores
    sum_k w_k * H(P_t(i)_k, P_s(j)_{k+}). The loss is the mean over pairs.

    Computed without gathering pair x patch x prototype tensors: the matches form a sparse
    matrix A (student patch row, teacher patch row) holding w_k / #pairs, so the loss is
    -sum(T * log P_s) with the per-student-patch target T = A @ P_t (one (G*B*N, K) tensor;
    its gradient with respect to log P_s is -T). Matching runs `chunk` pairs at a time.

    Args:
        t_probs: (G, B, N, K) teacher patch probabilities.
        s_logp: (G, B, N, K) student patch log-probabilities.
        t_feat: (G, B, N, D) teacher backbone patch tokens.
        s_feat: (G, B, N, D) student backbone patch tokens.
        t_weight: (G, B, N) teacher patch weights w_k, each row summing to 1 (1/N = uniform).
        pairs: (G, B, G, B) bool (teacher view, image, student view, image), from
            `global_pair_mask`.
        chunk: pairs matched per batched matmul (bounds the matching's memory).
    """
    idx = pairs.nonzero()                                               # (P, 4): t, i, s, j
    if idx.shape[0] == 0:
        return _zero(s_logp)
    b, n, k = s_logp.shape[1], s_logp.shape[2], s_logp.shape[3]
    rows_t = idx[:, 0] * b + idx[:, 1]                                  # teacher image-view
    rows_s = idx[:, 2] * b + idx[:, 3]                                  # student image-view
    with torch.no_grad():
        tf, sf = t_feat.flatten(0, 1), s_feat.flatten(0, 1)             # (G*B, N, D)
        best = torch.cat([                                               # (P, N): Eq. 4
            (F.normalize(tf[rt].float(), dim=-1) @ F.normalize(sf[rs].float(), dim=-1)
             .transpose(1, 2)).argmax(-1)
            for rt, rs in zip(rows_t.split(chunk), rows_s.split(chunk))])
        patches = torch.arange(n, device=best.device)
        student_row = (rows_s[:, None] * n + best).reshape(-1)
        teacher_row = (rows_t[:, None] * n + patches).reshape(-1)
    n_rows = s_logp.shape[0] * b * n
    weight = (t_weight.flatten(0, 1)[rows_t] / idx.shape[0]).reshape(-1)    # w_k / P
    with torch.autocast(s_logp.device.type, enabled=False):              # sums stay in float32
        a = torch.sparse_coo_tensor(torch.stack([student_row, teacher_row]), weight.to(t_probs.dtype),
                                    (n_rows, t_probs.shape[0] * t_probs.shape[1] * n),
                                    check_invariants=False)   # indices in range by construction
        target = torch.sparse.mm(a, t_probs.reshape(-1, k))             # (G*B*N, K)
        return -torch.dot(target.flatten(), s_logp.flatten())           # Eq. 5, mean over pairs


def patch_loss_official(t_probs: Tensor, s_logp: Tensor, t_feat: Tensor, s_feat: Tensor,
                        labels: Tensor, t_attn: Tensor | None) -> Tensor:
    """The patch term as computed by the released SMKD code (`SMKDLoss`, see docs/methods/smkd.md §1.2).

    For student view s, teacher view t != s and each label group g (batch indices with one
    label, ascending; g_0 its first image) and each teacher image i of the group:
    (1) the match score of teacher patch k (image i, view t) and student patch l (image j, view s)
    is (sum_c f_t[i, k, c]) * (sum_c f_s[j, l, c]) on L2-normalised features, not a dot product;
    (2) the matched student logits are taken from image g_0 (within-image indices used on the
    group-flattened tensor); (3) the teacher target is image j's patch k from view s.
    Uniform weights (`t_attn=None`): rows j == i are dropped and the rest averaged, groups of one
    image give no term. Attention weights: sum over all (j, k) of attn_t[j, k] * H.
    The loss is the mean of these terms (0 when there is none; the code divides 0 by 0).

    Args:
        t_probs, s_logp, t_feat, s_feat: as in `patch_loss_paper`.
        labels: (B,) class ids (`arange(B)` when unlabelled).
        t_attn: (G, B, N) teacher [CLS]->patch attention, or None for uniform weights.
    """
    n_views, n = s_logp.shape[0], s_logp.shape[2]
    with torch.no_grad():
        t_sum = F.normalize(t_feat.float(), dim=-1).sum(-1)             # (G, B, N)
        s_sum = F.normalize(s_feat.float(), dim=-1).sum(-1)
    terms = []
    for label in labels.unique(sorted=True):
        grp = (labels == label).nonzero().squeeze(1)                    # ascending
        g = grp.numel()
        if t_attn is None and g < 2:
            continue
        for s in range(n_views):
            for t in range(n_views):
                if s == t:
                    continue
                score = t_sum[t, grp][:, None, :, None] * s_sum[s, grp][None, :, None, :]
                best = score.argmax(-1)                                 # (i, j, k) -> l
                s_rows = s_logp[s, grp[0]][best]                        # (g, g, N, K)
                ce = -(t_probs[s, grp][None] * s_rows).sum(-1)          # (g, g, N)
                if t_attn is not None:
                    terms.append((ce * t_attn[t, grp][None]).sum((1, 2)))
                else:
                    off = ~torch.eye(g, dtype=torch.bool, device=ce.device)
                    terms.append((ce * off[..., None]).sum((1, 2)) / ((g - 1) * n))
    if not terms:
        return _zero(s_logp)
    return torch.cat(terms).mean()
