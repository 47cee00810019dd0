"""A frozen teacher's argmax predictions on evaluation batches, kept on disk.

Every KD/SSKD/DKD/CSKD trial of a study evaluates the same frozen teacher on the same test
images; its forward pass is the larger part of each evaluation (a resnet20 over the 10,000
CIFAR-10 test images takes ~15 s on one CPU core, the resnet8 student ~5 s). The top-1 evaluator
therefore looks each batch's teacher argmax up here before running the teacher.

The cache is content-addressed:
- the teacher key is a digest of the method class, the teacher module's structure (its `repr`:
  layer types and their settings), every tensor of its ``state_dict`` (names, dtypes, shapes,
  bytes: the weights actually in memory, not a checkpoint path that may be overwritten), the
  device (type, and the GPU model on CUDA) and the torch version;
- the batch key is a digest of the teacher key and the batch's input bytes, dtype and shape as
  the evaluator feeds them, so it holds for any split, transform or batch size; each DDP rank
  scores its own shard, so ranks reuse their own batches, and trials and studies reuse them all.
What the key cannot see is code: a change to how a teacher computes its logits (a bug fix in a
backbone) needs a new `VERSION` here, or the folder deleted.

Files: ``$KDRAY_CACHE_DIR/teacher_preds/<teacher key>/<batch key>.npy`` (default
``~/.cache/kdray``), one int64 vector of argmax classes each. The folders are created private
(0700) and used only when owned by the current user; a file is written with the data package's
`save_atomic` (a unique temporary name, then a rename: concurrent trials, ranks and nodes write
identical bytes, a reader never sees a partial file), read with ``np.load(allow_pickle=False)``
and used only when it is an int64 vector of the batch's length, else recomputed. Where the
folder cannot be written the predictions are kept in memory only. Deleting the folder is always
safe.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from kdray.data.base import save_atomic, user_cache_dir
from kdray.dist import unwrap

VERSION = 2  # bump when what a cached prediction means changes (or the key)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object addresses in a repr differ per process


def _tensor_bytes(t: Tensor) -> memoryview:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def teacher_key(method: nn.Module, teacher: nn.Module, device: torch.device | str) -> str:
    """Digest of what decides the teacher's predictions on a given input."""
    h = hashlib.blake2b(digest_size=16)
    kind = type(method)
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else ""
    net = unwrap(teacher)  # DDP-wrapped or not
    h.update(f"v{VERSION}|{kind.__module__}.{kind.__qualname__}|{dev.type}|{gpu}|"
             f"{torch.__version__}|{_ADDRESS.sub('', repr(net))}".encode())
    for name, t in sorted(net.state_dict().items()):
        h.update(f"|{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


class TeacherPredictions:
    """Argmax predictions of one frozen teacher, looked up per evaluation batch."""

    def __init__(self, key: str, root: Path | None = None) -> None:
        self.key = key
        self.folder = (root or user_cache_dir("teacher_preds")) / key
        self._memory: dict[str, Tensor] = {}
        self._usable: bool | None = None  # the folder checked (on first use), then a write failed

    def batch_key(self, x: Tensor) -> str:
        """Digest of the teacher key and one batch of inputs (call on the CPU tensor)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.key}|{x.dtype}|{tuple(x.shape)}|".encode())
        h.update(_tensor_bytes(x))
        return h.hexdigest()

    def argmax(self, batch_key: str, n: int,
               compute: Callable[[], Tensor | None]) -> Tensor | None:
        """The teacher's argmax for the batch of `n` images (CPU int64): from memory, from disk,
        or computed by `compute()` (the teacher's logits; None: a teacher that does not
        classify, nothing stored) and stored."""
        if (pred := self._memory.get(batch_key)) is not None:
            return pred
        path = self.folder / f"{batch_key}.npy"
        pred = self._load(path, n) if self._folder_ok() else None
        if pred is None:
            if (logits := compute()) is None:
                return None
            pred = logits.argmax(1).to("cpu", torch.int64)
            if self._folder_ok():
                try:
                    save_atomic(path, pred.numpy())
                except OSError:  # read-only, full, ...: keep predictions in memory only
                    self._usable = False
        self._memory[batch_key] = pred
        return pred

    def _folder_ok(self) -> bool:
        """Whether the folder may be read and written: ours (created 0700 if absent); a folder
        someone else owns could hold planted predictions, so it is left alone."""
        if self._usable is None:
            try:
                self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._usable = self.folder.is_dir() and self.folder.stat().st_uid == os.getuid()
            except OSError:
                self._usable = False
        return self._usable

    @staticmethod
    def _load(path: Path, n: int) -> Tensor | None:
        """The stored vector, or None when absent, damaged or not `n` int64 classes."""
        try:
            pred = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - damaged or foreign: recompute
            return None
        if not isinstance(pred, np.ndarray):  # an .npz archive
            pred.close()
            return None
        ok = pred.dtype == np.int64 and pred.shape == (n,)
        return torch.from_numpy(pred) if ok else None
