"""Few-shot class-incremental (FSCIL) session runner: prototype classifier over frozen features.

Method-agnostic: only ``method.features`` is used (backbone frozen, train-only modules unused), as
in CEC's prototype baseline and M2SD's stage 3 (docs/methods/m2sd.md §5.3-5.4). Session 0 replaces the
trained base classifier by the base-class means of the base-session training images (CEC
convention); each incremental session t appends the means of the ``shots`` images of its new
classes, computed from that session's images only. After session t the test images of every class
seen so far are classified by cosine similarity to the prototypes (the CEC temperature 16 scales
all logits alike, so top-1 does not depend on it). Features of all rows are extracted once with the
evaluation transform: since the backbone is frozen, this equals extracting them per session.

Metrics (percent), prefixed by the evaluated split (``<split>`` = eval.split, "test" or "val"):
``<split>/fscil_s<t>`` per session, ``<split>/fscil_avg`` (mean over all sessions, session 0
included), ``<split>/fscil_pd`` (first - last), ``<split>/fscil_last``, and for the last session
``<split>/fscil_base``, ``<split>/fscil_novel`` and their harmonic mean ``<split>/fscil_hm``.
Records: ``{"sessions": session_table(...)}`` (kdray.eval.fscil_table), one row per session,
compatible with the episode-record schema (``episode_id`` = session, ``way`` = seen classes,
``classifier`` = "fscil_proto", ``accuracy`` in [0, 1]) plus ``session``, ``seen_classes``,
``n_test``, ``n_train``, ``base_acc``, ``novel_acc``, ``hm`` (percent; NaN where undefined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdray.data.fscil import FscilData, Protocol, RowsDataset, fscil_data
from kdray.eval.fewshot import EvalResult, extract_features
from kdray.eval.fscil_table import session_table

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from kdray.config import ExperimentConfig
    from kdray.methods.base import Method

CLASSIFIER = "fscil_proto"


def class_means(feats: Tensor, labels: Tensor, classes: Sequence[int]) -> Tensor:
    """(len(classes), D) mean feature of each class; raises if a class has no rows."""
    out = []
    for c in classes:
        sel = labels == c
        if not bool(sel.any()):
            raise ValueError(f"FSCIL: no training rows for class {c}")
        out.append(feats[sel].mean(dim=0))
    return torch.stack(out)


def cosine_predict(prototypes: Tensor, feats: Tensor) -> Tensor:
    """(N,) index of the prototype (C, D) with the highest cosine similarity to each (N, D) row."""
    return (F.normalize(feats, dim=-1) @ F.normalize(prototypes, dim=-1).T).argmax(dim=-1)


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b); NaN if either is NaN, 0 if both are 0."""
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def summary_metrics(accs: Sequence[float]) -> dict[str, float]:
    """{"avg": mean over sessions, "pd": first - last, "last": last} of per-session accuracies."""
    a = np.asarray(accs, dtype=np.float64)
    if a.size == 0:
        raise ValueError("summary_metrics needs at least one session")
    return {"avg": float(a.mean()), "pd": float(a[0] - a[-1]), "last": float(a[-1])}


def _acc(pred: Tensor, y: Tensor, mask: Tensor) -> float:
    n = int(mask.sum())
    return float("nan") if n == 0 else 100.0 * int((pred[mask] == y[mask]).sum()) / n


def run_sessions(protocol: Protocol, session_rows: Sequence[np.ndarray], train_feats: Tensor,
                 train_labels: Tensor, test_feats: Tensor, test_labels: Tensor) -> list[dict]:
    """Session records of the prototype classifier (see module docstring).

    Args:
        protocol: class layout.
        session_rows: session_rows[t] = rows of the training set used in session t.
        train_feats, train_labels: (N, D), (N,) features and protocol labels of the training set.
        test_feats, test_labels: (M, D), (M,) features and protocol labels of the test set.

    Returns:
        One record per session 0 .. protocol.sessions.
    """
    protos: list[Tensor] = []
    records = []
    for t in range(protocol.sessions + 1):
        rows = torch.as_tensor(np.asarray(session_rows[t]), dtype=torch.long)
        new = protocol.session_classes(t)
        y_rows = train_labels[rows]
        if not bool(((y_rows >= new.start) & (y_rows < new.stop)).all()):
            raise ValueError(f"FSCIL session {t}: training rows outside classes {new}")
        protos.append(class_means(train_feats[rows], y_rows, new))
        seen = protocol.seen_classes(t)
        mask = test_labels < seen.stop
        pred = cosine_predict(torch.cat(protos), test_feats[mask])  # index = class id
        y = test_labels[mask]
        base = y < protocol.base_classes
        acc = _acc(pred, y, torch.ones_like(base))
        b_acc, n_acc = _acc(pred, y, base), _acc(pred, y, ~base)
        records.append({
            "episode_id": t, "session": t, "way": len(seen), "shot": protocol.shots,
            "classifier": CLASSIFIER, "accuracy": acc / 100.0, "class_ids": list(seen),
            "seen_classes": len(seen), "n_test": int(mask.sum()), "n_train": len(rows),
            "session_acc": acc, "base_acc": b_acc, "novel_acc": n_acc,
            "hm": harmonic_mean(b_acc, n_acc)})
    return records


def session_metrics(records: Sequence[dict], split: str = "test") -> dict[str, float]:
    """The ``<split>/fscil_*`` metrics of a list of session records."""
    accs = [r["session_acc"] for r in records]
    out = {f"{split}/fscil_s{r['session']}": r["session_acc"] for r in records}
    out.update({f"{split}/fscil_{k}": v for k, v in summary_metrics(accs).items()})
    last = records[-1]
    out.update({f"{split}/fscil_base": last["base_acc"], f"{split}/fscil_novel": last["novel_acc"],
                f"{split}/fscil_hm": last["hm"]})
    return out


class FscilEvaluator:
    """Runs the sessions of ``cfg.data.dataset``'s protocol on ``method.features``.

    Args:
        cfg: the experiment (data.dataset must be an FSCIL dataset).
        dataset: the test split with the evaluation transform (``build_eval_dataset``).
    """

    def __init__(self, cfg: ExperimentConfig, dataset: Dataset) -> None:
        self.cfg = cfg
        self.data: FscilData = fscil_data(cfg.data)
        self.test = dataset
        self.rows = np.unique(np.concatenate(self.data.session_rows))
        train = RowsDataset(self.data.train, self.rows)
        train.transform = getattr(dataset, "transform", None)
        self.train = train

    def __call__(self, method: Method, device: torch.device | str) -> EvalResult:
        """Evaluate; the method is left in the train/eval mode it came in."""
        was_training = method.training
        method.eval()
        kw = {"batch_size": self.cfg.eval.batch_size, "device": device,
              "num_workers": self.cfg.data.loader_workers}
        try:
            tr_f, tr_y = extract_features(method.features, self.train, **kw)
            te_f, te_y = extract_features(method.features, self.test, **kw)
        finally:
            method.train(was_training)
        # scatter the extracted rows back to training-set row numbers
        full_f = tr_f.new_zeros(len(self.data.train), tr_f.shape[1])
        full_y = torch.full((len(self.data.train),), -1, dtype=torch.long)
        idx = torch.as_tensor(self.rows)
        full_f[idx], full_y[idx] = tr_f, tr_y
        records = run_sessions(self.data.protocol, self.data.session_rows, full_f, full_y,
                               te_f, te_y)
        return EvalResult(metrics=session_metrics(records, self.cfg.eval.split),
                          records={"sessions": session_table(records)})
