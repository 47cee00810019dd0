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

Files: ``$KDRAY_CACHE_DIR/teacher_preds/<teacher key>/<batch key>.pt`` (default
``~/.cache/kdray``), one int64 tensor of argmax classes each. The folders are created private
(0700) and used only when owned by the current user; a file is written to a unique temporary
name and renamed (concurrent trials, ranks and nodes write identical bytes; a reader never sees
a partial file), read with ``torch.load(weights_only=True)`` and used only when it is an int64
vector of the batch's length, else recomputed. Where the folder cannot be written the
predictions are kept in memory only. Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from kdray.dist import unwrap

VERSION = 2  # bump when what a cached prediction means changes (or the key)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object addresses in a repr differ per process


def cache_root() -> Path:
    """``$KDRAY_CACHE_DIR/teacher_preds`` (default ``~/.cache/kdray/teacher_preds``)."""
    return Path(os.environ.get("KDRAY_CACHE_DIR", "~/.cache/kdray")).expanduser() / "teacher_preds"


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
        self.folder = (root or cache_root()) / key
        self._memory: dict[str, Tensor] = {}
        self._writable = True
        self.hits = self.misses = 0

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
            self.hits += 1
            return pred
        path = self.folder / f"{batch_key}.pt"
        pred = self._load(path, n) if self._usable() else None
        if pred is None:
            self.misses += 1
            if (logits := compute()) is None:
                return None
            pred = logits.argmax(1).to("cpu", torch.int64)
            self._store(path, pred)
        else:
            self.hits += 1
        self._memory[batch_key] = pred
        return pred

    def _usable(self) -> bool:
        """Whether the folder may be read and written: ours (created 0700 if absent); a folder
        someone else owns could hold planted predictions, so it is left alone."""
        if not self._writable:
            return False
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._writable = self.folder.is_dir() and self.folder.stat().st_uid == os.getuid()
        except OSError:
            self._writable = False
        return self._writable

    @staticmethod
    def _load(path: Path, n: int) -> Tensor | None:
        try:
            pred = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - damaged or foreign (weights_only refused it): recompute
            return None
        ok = isinstance(pred, Tensor) and pred.dtype == torch.int64 and pred.shape == (n,)
        return pred if ok else None

    def _store(self, path: Path, pred: Tensor) -> None:
        if not self._usable():
            return
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.folder)
            with os.fdopen(fd, "wb") as f:
                torch.save(pred, f)
            os.replace(tmp, path)
        except Exception:  # noqa: BLE001 - read-only, full, ...: keep predictions in memory only
            self._writable = False
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
