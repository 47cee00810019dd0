"""A frozen teacher's argmax predictions on evaluation batches, kept on disk.

Every KD/SSKD/DKD/CSKD trial of a study evaluates the same frozen teacher on the same test
images; its forward pass is the larger part of each evaluation (a resnet20 over the 10,000
CIFAR-10 test images takes ~15 s on one CPU core, the resnet8 student ~5 s). The top-1 evaluator
therefore looks each batch's teacher argmax up here before running the teacher.

The cache is content-addressed, so a hit can only return what the teacher would compute:
- the teacher key is a digest of the method class, the device type, the torch version and every
  tensor of the teacher's ``state_dict`` (names, dtypes, shapes, bytes), i.e. the weights
  actually in memory, not a checkpoint path that may be overwritten;
- the batch key is a digest of the teacher key and the batch's input bytes, dtype and shape as
  the evaluator feeds them, so it holds for any split, transform, batch size, DDP rank or node.

Files: ``$KDRAY_CACHE_DIR/teacher_preds/<teacher key>/<batch key>.pt`` (default
``~/.cache/kdray``), one int64 tensor of argmax classes each, written through a temporary file and
a rename (concurrent trials and ranks write identical bytes; a reader never sees a partial file)
and read with ``torch.load(weights_only=True)``. Where the folder cannot be written the
predictions are kept in memory only. Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from kdray.dist import unwrap

VERSION = 1  # bump when what a cached prediction means changes


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
    h.update(f"v{VERSION}|{kind.__module__}.{kind.__qualname__}|{torch.device(device).type}|"
             f"{torch.__version__}".encode())
    for name, t in sorted(unwrap(teacher).state_dict().items()):  # DDP-wrapped or not
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

    def argmax(self, batch_key: str, compute: Callable[[], Tensor | None]) -> Tensor | None:
        """The teacher's argmax for the batch (CPU int64): from memory, from disk, or computed
        by `compute()` (the teacher's logits; None: a teacher that does not classify, nothing
        stored) and stored."""
        if (pred := self._memory.get(batch_key)) is not None:
            self.hits += 1
            return pred
        path = self.folder / f"{batch_key}.pt"
        pred = self._load(path)
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

    @staticmethod
    def _load(path: Path) -> Tensor | None:
        try:
            pred = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - damaged or foreign (weights_only refused it): recompute
            return None
        return pred if isinstance(pred, Tensor) and pred.dtype == torch.int64 else None

    def _store(self, path: Path, pred: Tensor) -> None:
        if not self._writable:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            torch.save(pred, tmp)
            os.replace(tmp, path)
        except OSError:  # read-only or full: keep the predictions in memory only
            self._writable = False
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
