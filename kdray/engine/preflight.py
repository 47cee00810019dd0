"""Every check that can fail before any Ray resource starts (no Ray here: the runtime and the
plain-process entry points call `preflight`)."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor

from kdray.checks import ConfigError, UserError
from kdray.config import ExperimentConfig
from kdray.data import DATASETS, build_dataset, build_eval_dataset, check_data, num_train_classes
from kdray.methods import METHODS
from kdray.modules.backbones import backbone_exists
from kdray.modules.teachers import check_teacher_card
from kdray.types import DataInfo


def preflight(cfg: ExperimentConfig, *, address: str | None = None,
              stages_pending: bool = False, check_machine: bool = True) -> None:
    """Data present and readable, method settings compatible (teacher checkpoints, phase
    hand-offs, `train.init_from` opened and matched to the model), backbone names known, the
    requested workers and GPUs available on this machine for a local run (`address` None or
    "local"); raises ConfigError (or DataNotFoundError) naming the problem.

    `stages_pending`: a study's stages (teacher, phase 1) have not run yet, so the checks of what
    they produce (`train.init_from`, `model.teacher_ckpt`, `Method.preflight`) are left to the
    preflight that follows them; everything else runs. `check_machine=False`: no Ray run
    (`kdray train --no-ray`), so the resources section is not compared with the machine."""
    method = METHODS[cfg.method]
    if (cfg.data.mixup_alpha > 0 or cfg.data.cutmix_alpha > 0) and not method.supports_mix:
        raise ConfigError(f"data.mixup_alpha/cutmix_alpha: method {cfg.method!r} does not apply "
                          "mixup/CutMix (methods that do: "
                          f"{sorted(k for k, m in METHODS.items() if m.supports_mix)})")
    with data_errors(cfg):
        check_data(cfg)
        read_data(cfg)
    if not backbone_exists(cfg.model.arch):
        raise ConfigError(f"model.arch: unknown backbone {cfg.model.arch!r} (kdray backbones or "
                          "any timm.list_models() name)")
    if not stages_pending:
        if cfg.train.init_from and not os.path.isfile(cfg.train.init_from) and not os.path.isfile(
                os.path.join(cfg.train.init_from, "checkpoint.pt")):
            raise ConfigError(f"train.init_from: no checkpoint at {cfg.train.init_from!r}")
        method_preflight(cfg)
        check_weights(cfg)
    if check_machine:
        check_resources(cfg, address)


# ---------------------------------------------------------------------------- data
@contextlib.contextmanager
def data_errors(cfg: ExperimentConfig) -> Iterator[None]:
    """Turn a failure to read the dataset's files (bad archive, annotations that do not parse,
    a truncated image) into a ConfigError naming the dataset and its root."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        import pickle
        import tarfile
        import zipfile

        if not isinstance(e, OSError | ValueError | KeyError | IndexError | EOFError | TypeError
                          | pickle.UnpicklingError | tarfile.TarError | zipfile.BadZipFile):
            raise
        raise ConfigError(
            f"data.dataset={cfg.data.dataset!r}: its files under data.root={cfg.data.root!r} "
            f"(or KDRAY_DATA_PATH) cannot be read: {type(e).__name__}: {e}. Replace the "
            "damaged files (re-download or re-extract them)") from e


def read_data(cfg: ExperimentConfig) -> None:
    """Build every split the run uses and read one image of each: a split with no images, or
    a classification split with a class that has none (an empty class folder), is an error."""
    detection = hasattr(DATASETS[cfg.data.dataset], "train_loader")
    splits = [cfg.data.train_split]
    if cfg.eval.kind != "none" and cfg.eval.split not in splits:
        splits.append(cfg.eval.split)
    for split in splits:
        ds = build_dataset(cfg.data, split)
        where = f"split {split!r} of data.dataset={cfg.data.dataset!r} (data.root={cfg.data.root!r})"
        if len(ds) == 0:
            raise ConfigError(f"{where} has no images; check the data folder or re-extract it")
        ds.load(0)
        if not detection and ds.classes:
            seen = set(ds.targets)
            if getattr(ds, "partial_classes", False):  # an FSCIL session split: its own classes
                want = DATASETS[cfg.data.dataset].num_classes(cfg.data, split)
                if len(seen) < want:
                    raise ConfigError(f"{where}: images of {len(seen)} of its {want} classes; "
                                      "check the data folder or re-extract it")
                continue
            empty = [c for i, c in enumerate(ds.classes) if i not in seen]
            if empty:
                raise ConfigError(f"{where}: {len(empty)} class(es) have no images, e.g. "
                                  f"{empty[:5]}; fill or remove those class folders")


# ---------------------------------------------------------------------------- checkpoints
def open_checkpoint(path: str, key: str) -> Any:
    """`torch.load(path, weights_only=True)` on CPU (a directory: its checkpoint.pt), with a
    ConfigError naming `key` and the file when it is missing, truncated or not a torch file."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: no checkpoint at {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, BadZipFile ...
        raise ConfigError(f"{key}: {path!r} cannot be opened as a torch checkpoint "
                          f"(truncated, or not written by torch.save; only tensors and plain "
                          f"containers are read): {type(e).__name__}: {str(e)[:300]}") from e


def check_weights(cfg: ExperimentConfig) -> None:
    """With `train.init_from` or `model.teacher_ckpt` set: build the method on the CPU (which
    loads the teacher) and load `init_from` into it, so a checkpoint of another architecture
    fails here, not inside a worker."""
    if not (cfg.train.init_from or cfg.model.teacher_ckpt):
        return
    from kdray.methods import build_method

    try:
        method = build_method(cfg, num_train_classes(cfg))
    except UserError:
        raise
    except Exception as e:
        raise ConfigError(f"model.teacher_ckpt={cfg.model.teacher_ckpt!r} does not load into "
                          f"model.teacher_arch={cfg.model.teacher_arch or cfg.model.arch!r}: "
                          f"{type(e).__name__}: {str(e)[:400]}") from e
    if not cfg.train.init_from:
        return
    state = open_checkpoint(cfg.train.init_from, "train.init_from")
    if not isinstance(state, dict) or "model" not in state:
        raise ConfigError(f"train.init_from: {cfg.train.init_from!r} is not a kdray checkpoint "
                          "(a dict with 'model', written by `kdray train` or a study stage)")
    try:  # the method's own rule, as training applies it (M2SD keeps its FE module's init)
        method.init_from_checkpoint(cfg.train.init_from)
    except Exception as e:
        raise ConfigError(f"train.init_from: {cfg.train.init_from!r} does not fit method "
                          f"{cfg.method!r} with model.arch={cfg.model.arch!r}: "
                          f"{type(e).__name__}: {str(e)[:400]}") from e


# ---------------------------------------------------------------------------- resources
def check_resources(cfg: ExperimentConfig, address: str | None = None) -> None:
    """A local run (no `address`) must fit this machine: Ray would otherwise wait forever for
    GPUs or CPUs it does not have."""
    if address not in (None, "", "local"):
        return  # a cluster: the autoscaler may add nodes; Ray reports what it cannot place
    r = cfg.resources
    if r.gpus_per_worker > 0 and not torch.cuda.is_available():
        raise ConfigError(f"resources.gpus_per_worker={r.gpus_per_worker}: this machine has no "
                          "GPU torch can use and no --address was given; set "
                          "resources.gpus_per_worker=0 (--gpus-per-worker 0) or pass --address "
                          "of a cluster with GPUs")
    if r.gpus_per_worker > 0 and r.num_workers * r.gpus_per_worker > torch.cuda.device_count():
        raise ConfigError(f"resources.num_workers={r.num_workers} x gpus_per_worker="
                          f"{r.gpus_per_worker} needs more GPUs than the "
                          f"{torch.cuda.device_count()} of this machine; lower them or pass "
                          "--address of a cluster")
    cpus = os.cpu_count() or 1
    if r.num_workers * r.cpus_per_worker > cpus:
        raise ConfigError(f"resources.num_workers={r.num_workers} x resources.cpus_per_worker="
                          f"{r.cpus_per_worker} needs more CPUs than the {cpus} of this machine; "
                          "lower --workers / resources.num_workers (or cpus_per_worker), or pass "
                          "--address of a cluster")


# ---------------------------------------------------------------------------- locations
def check_locations(*, storage_path: str | None = None, tracking_uri: str | None = None,
                    results_dir: str | None = None, create: bool = True,
                    timeout_s: float = 3.0) -> None:
    """Local storage / results folders writable (created when `create`); a sqlite tracking
    store's folder writable; an http(s) tracking server accepting connections within
    `timeout_s`. Remote storage (s3://, gs://) is left to Ray."""
    for key, folder in (("--storage-path", storage_path), ("--results-dir", results_dir)):
        if folder and "://" not in folder:
            _writable_dir(key, folder, create)
    if not tracking_uri:
        return
    url = urlparse(tracking_uri)
    if url.scheme == "sqlite":
        path = tracking_uri[len("sqlite:///"):]
        if path and ":memory:" not in path:
            _writable_dir("--tracking-uri", os.path.dirname(os.path.abspath(path)), create)
    elif url.scheme in ("http", "https"):
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
                pass
        except OSError as e:
            raise ConfigError(f"--tracking-uri {tracking_uri}: no MLflow server answers at "
                              f"{url.hostname}:{port} within {timeout_s:.0f} s ({e}); start it "
                              "(or the SSH tunnel to it) or pass another --tracking-uri") from None
    elif url.scheme in ("", "file"):
        _writable_dir("--tracking-uri", url.path or tracking_uri, create)


def _writable_dir(key: str, folder: str, create: bool) -> None:
    folder = os.path.abspath(os.path.expanduser(folder))
    probe = folder
    while not os.path.exists(probe):  # the nearest existing ancestor must let us create it
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ConfigError(f"{key}: {folder!r} is not a folder ({probe!r} is a file)")
    try:
        if create:
            os.makedirs(folder, exist_ok=True)
            probe = folder
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".kdray-write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"{key}: {folder!r} is not writable ({e.strerror}); pass a folder you "
                          "can write to") from None


def data_info(cfg: ExperimentConfig) -> DataInfo:
    """What methods may know about the data (see `kdray.types.DataInfo`)."""
    spec = DATASETS[cfg.data.dataset]
    return DataInfo(num_classes=num_train_classes(cfg), detection=hasattr(spec, "train_loader"),
                    top1=lambda fn, max_items=0: measure_top1(fn, cfg, max_items))


@torch.no_grad()
def measure_top1(logits_fn: Callable[[Tensor], Tensor], cfg: ExperimentConfig,
                 max_items: int = 0) -> float:
    """Top-1 (%) of `logits_fn` ((B, 3, H, W) -> (B, C)) on cfg.eval.split, on `max_items`
    evenly spaced images (0 = all), on the CPU of the caller."""
    from kdray.data.loader import eval_loader

    data = build_eval_dataset(cfg)
    n = len(data)
    items = [i * n // max_items for i in range(max_items)] if 0 < max_items < n else range(n)
    hits = total = 0
    for x, y in eval_loader(data, items, batch_size=cfg.eval.batch_size):
        hits += int((logits_fn(x).argmax(dim=1) == torch.as_tensor(y)).sum())
        total += len(y)
    if total == 0:
        raise ConfigError(f"eval.split {cfg.eval.split!r} is empty: cannot measure the teacher")
    return 100.0 * hits / total


def method_preflight(cfg: ExperimentConfig) -> None:
    """The teacher's registry card (`teacher_card`), then the method's own checks
    (`Method.preflight`), with the data facts they need."""
    info = data_info(cfg)
    teacher_card(cfg, info)
    METHODS[cfg.method].preflight(cfg, info)


def teacher_card(cfg: ExperimentConfig, data: DataInfo) -> None:
    """For every method: when `model.teacher_ckpt` is a file with a card beside it, the card must
    match the file (checksum), `model.teacher_arch` (default `model.arch`), `data.dataset`, the
    class count and the method's expectations (`Method.teacher_card_checks`)."""
    ckpt = cfg.model.teacher_ckpt
    if not ckpt or not os.path.isfile(ckpt):
        return  # no teacher, or the method reports the missing file in its own words
    check_teacher_card(ckpt, arch=cfg.model.teacher_arch or cfg.model.arch,
                       dataset=cfg.data.dataset, num_classes=data.num_classes,
                       **METHODS[cfg.method].teacher_card_checks(cfg))
