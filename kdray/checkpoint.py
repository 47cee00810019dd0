"""Checkpoints: model, optimizer, scaler, RNG states and position, loadable with weights_only=True."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

CKPT_NAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_plain(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def save_checkpoint(state: dict[str, Any], directory: str) -> str:
    """Write `state` atomically to `<directory>/checkpoint.pt`; returns the file path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CKPT_NAME)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint file (or a directory holding checkpoint.pt) on CPU, weights only."""
    if os.path.isdir(path):
        path = os.path.join(path, CKPT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def state_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                   optional: tuple[str, ...] = ()) -> str:
    """"" when `state` loads strictly into a module whose state_dict is `own` (keys ending in one
    of `optional` may be absent on either side), else "missing [...], unexpected [...], shape
    mismatch [(key, checkpoint shape, model shape), ...]" (5 of each at most)."""
    skip = {k for k in set(own) ^ set(state) if optional and k.endswith(optional)}
    missing = sorted(set(own) - set(state) - skip)
    unexpected = sorted(set(state) - set(own) - skip)
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return ""
    return f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {shapes[:5]}"
