"""kdray.data: datasets (real shared data and fakes), errors, samplers, loaders, transforms."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdray.config import ConfigError, ExperimentConfig
from kdray.data import (
    DATASETS,
    DataNotFoundError,
    build_dataset,
    build_eval_dataset,
    check_data,
    num_train_classes,
    synthetic,
)
from kdray.data.omniglot import Omniglot

SHARED = Path(__file__).parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _no_extra_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDRAY_DATA_PATH", raising=False)


@pytest.fixture(scope="module")
def shared() -> Path:
    assert (SHARED / "omniglot").is_dir(), f"shared data missing at {SHARED}"  # fail, not skip
    return SHARED


def cfg_of(**data) -> ExperimentConfig:
    over = {f"data.{k}": v for k, v in data.items()}
    return ExperimentConfig().override(over)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("syn"))


def small_syn(root: str, **kw) -> ExperimentConfig:
    """20 classes x 20 images: 13 train / 3 val / 4 test classes (round(3.2), round(4.0)).

    260 train images = 32 batches of 8."""
    return cfg_of(root=root, synthetic_classes=20, synthetic_per_class=20, batch_size=8, **kw)


# ---------------------------------------------------------------------------- synthetic_fs
def test_synthetic_deterministic_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c1, c2 = small_syn(str(tmp_path / "a")).data, small_syn(str(tmp_path / "b")).data
    a = build_dataset(c1, "train")
    files = list((tmp_path / "a" / "synthetic_fs").glob("*.npz"))
    assert [f.name for f in files] == ["synthetic_fs_c20_n20_s0_v1.npz"]
    b = build_dataset(c2, "train")  # generated again elsewhere: identical bytes
    assert np.array_equal(a.images, b.images) and a.targets == b.targets

    def boom(*args, **kw):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(synthetic, "generate", boom)   # the cache is read, never regenerated
    again = build_dataset(c1, "train")
    assert np.array_equal(again.images, a.images)


def test_synthetic_default_split_and_stats(syn_root: str) -> None:
    d = cfg_of(root=syn_root).data
    sets = {s: build_dataset(d, s) for s in ("train", "val", "test")}
    assert [len(sets[s].classes) for s in sets] == [64, 16, 20]
    assert [len(sets[s]) for s in sets] == [64 * 60, 16 * 60, 20 * 60]
    names = [n for s in sets.values() for n in s.classes]
    assert len(set(names)) == 100  # disjoint class sets
    assert all(np.bincount(s.targets).tolist() == [60] * len(s.classes) for s in sets.values())
    img, label = sets["train"][0]
    assert img.size == (32, 32) and img.mode == "RGB" and label == sets["train"].targets[0]
    x = sets["train"].images.reshape(-1, 3) / 255.0  # the one array holds all splits
    mean, std = synthetic.STATS
    assert np.allclose(x.mean(0), mean, atol=2e-3) and np.allclose(x.std(0), std, atol=2e-3)


def test_synthetic_novel_classes_separable_on_raw_pixels(syn_root: str) -> None:
    # 5-way 5-shot nearest centroid on raw pixels of the 20 *test* classes, 200 seeded episodes.
    # Measured 0.46; chance is 0.20; we require >= 0.35 (chance + 15 points). (A conv4 trained
    # 3 epochs on the train classes reaches 0.93 1-shot on these classes; see the data report.)
    ds = build_dataset(cfg_of(root=syn_root).data, "test")
    feats = ds.images[ds.rows].reshape(len(ds), -1).astype(np.float32) / 255
    labels, rng, accs = np.asarray(ds.targets), np.random.default_rng(0), []
    for _ in range(200):
        protos, queries, qlab = [], [], []
        for j, c in enumerate(rng.choice(20, 5, replace=False)):
            idx = rng.permutation(np.flatnonzero(labels == c))
            protos.append(feats[idx[:5]].mean(0))
            queries.append(feats[idx[5:20]])
            qlab += [j] * 15
        q, p = np.concatenate(queries), np.stack(protos)
        pred = ((q[:, None] - p[None]) ** 2).sum(-1).argmin(1)
        accs.append((pred == np.asarray(qlab)).mean())
    assert np.mean(accs) >= 0.35


# ---------------------------------------------------------------------------- omniglot
def _lines(path: Path) -> list[str]:
    return [s for s in path.read_text().splitlines() if s.strip()]


def test_omniglot_vinyals_split_counts(shared: Path) -> None:
    d = cfg_of(dataset="omniglot", root=str(shared)).data
    for split, n_cls in (("train", 4112), ("val", 688), ("test", 1692), ("trainval", 4800)):
        lines = _lines(shared / "omniglot_vinyals_split" / f"{split}.txt")
        assert len(lines) == n_cls  # PROVENANCE.md table
        ds = build_dataset(d, split)
        assert ds.classes == lines and len(ds) == 20 * n_cls
        assert np.bincount(ds.targets).tolist() == [20] * n_cls
    assert num_train_classes(ExperimentConfig().override({"data.dataset": "omniglot"})) == 4112


def test_omniglot_lake_split_is_background_vs_evaluation(shared: Path) -> None:
    """Lake et al.'s protocol: train = the 964 images_background characters, test = the 659
    images_evaluation characters (the two official sets, by the .npz row counts), upright only;
    val = 5 background alphabets, left out of train only with data.holdout_val."""
    with np.load(shared / "omniglot" / "images_background.npz") as z:
        n_bg = z["images"].shape[0]
    with np.load(shared / "omniglot" / "images_evaluation.npz") as z:
        n_ev, first_eval = z["images"].shape[0], z["images"][0, 0]
    assert (n_bg, n_ev) == (964, 659)
    d = cfg_of(dataset="omniglot_lake", root=str(shared)).data
    train, val, test = (build_dataset(d, s) for s in ("train", "val", "test"))
    assert (len(train.classes), len(val.classes), len(test.classes)) == (964, 152, 659)
    assert len(test) == 659 * 20 and all(c.endswith("/rot000") for c in train.classes + test.classes)
    alpha = lambda ds: {c.split("/")[0] for c in ds.classes}  # noqa: E731
    assert len(alpha(train)) == 30 and len(alpha(test)) == 20 and not alpha(train) & alpha(test)
    assert set(val.classes) <= set(train.classes) and len(alpha(val)) == 5
    # test class 0, drawer 0 is row 0 of images_evaluation.npz (True = white background)
    assert test.classes[0] == "Angelic/character01/rot000"
    assert np.array_equal(np.asarray(test.load(0))[..., 0] == 255, first_eval)
    held = build_dataset(replace(d, holdout_val=True), "train")
    assert len(held.classes) == 964 - 152 and not set(held.classes) & set(val.classes)
    assert num_train_classes(ExperimentConfig().override({"data.dataset": "omniglot_lake"})) == 964


def test_omniglot_rotation_and_image_format(shared: Path) -> None:
    ds = build_dataset(cfg_of(dataset="omniglot", root=str(shared)).data, "val")
    assert ds.classes[0].endswith("rot000") and ds.classes[1].endswith("rot090")
    upright, turned = ds.load(3), ds.load(20 + 3)  # class 1 = class 0 turned 90 degrees, drawer 3
    assert upright.size == (105, 105) and upright.mode == "RGB"
    a, b = np.asarray(upright), np.asarray(turned)
    assert set(np.unique(a)) == {0, 255} and np.array_equal(b, np.rot90(a))
    assert (a == 0).mean() < 0.3  # black ink on white


def test_omniglot_npz_matches_official_pngs(shared: Path, tmp_path: Path) -> None:
    # Unpack the official small1 zip into the official folder layout and compare every drawing
    # of its 136 characters with the .npz reader (checks alphabets.csv and both readers).
    root = tmp_path / "omniglot"
    with zipfile.ZipFile(shared / "omniglot" / "images_background_small1.zip") as z:
        z.extractall(tmp_path)
    (tmp_path / "images_background_small1").rename(tmp_path / "images_background")
    root.mkdir()
    (tmp_path / "images_background").rename(root / "images_background")
    (root / "images_evaluation").mkdir()
    chars = sorted(str(p.relative_to(root / "images_background"))
                   for p in (root / "images_background").glob("*/character*"))
    assert len(chars) == 136
    classes = [f"{c}/rot000" for c in chars] + [f"{chars[0]}/rot270"]
    folder = Omniglot("folder", root, classes)
    npz = Omniglot("npz", shared / "omniglot", classes)
    assert len(folder) == len(npz) == 137 * 20
    for i in range(len(folder)):
        assert np.array_equal(np.asarray(folder.load(i)), np.asarray(npz.load(i))), i


# ---------------------------------------------------------------------------- CIFAR
@pytest.fixture(scope="module")
def cifar10_jpg(shared: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("c10")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDRAY_DATA_PATH", str(shared))
        d = cfg_of(dataset="cifar10", root=str(root)).data
        yield d, {s: build_dataset(d, s) for s in ("train", "test")}, root


def test_cifar10_jpeg_tarballs(cifar10_jpg, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d, sets, root = cifar10_jpg
    assert len(sets["train"]) == 50000 and len(sets["test"]) == 10000
    assert np.bincount(sets["train"].targets).tolist() == [5000] * 10
    assert np.bincount(sets["test"].targets).tolist() == [1000] * 10
    assert sets["test"].classes[0] == "airplane" and sets["test"].classes[9] == "truck"
    with tarfile.open(shared / "cifar10_jpg" / "cifar10_test.tar.gz") as tf:  # independent decode
        ref = np.asarray(Image.open(io.BytesIO(tf.extractfile("test/bird/0007.jpg").read())))
    assert np.array_equal(np.asarray(sets["test"].load(2 * 1000 + 7)), ref)
    assert sorted(p.name for p in (root / "cifar10_jpg").glob("*.npy")) == sorted(
        f"{s}_{(shared / 'cifar10_jpg' / f'cifar10_{s}.tar.gz').stat().st_size}_{k}.npy"
        for s in ("train", "test") for k in ("images", "labels"))
    monkeypatch.setenv("KDRAY_DATA_PATH", str(shared))

    def no_decode(path):
        raise AssertionError(f"decoded {path} again instead of reading the .npy cache")

    import kdray.data.cifar as cifar_module

    monkeypatch.setattr(cifar_module, "_decode_tar", no_decode)
    cached = build_dataset(d, "train")
    assert cached.targets == sets["train"].targets


def _trust(monkeypatch: pytest.MonkeyPatch, folder: Path, archive: str) -> None:
    """Register the MD5s of a test's fake archive files, as if they were the published ones
    (kdray unpickles no other CIFAR files)."""
    import hashlib

    import kdray.data.cifar as C

    known = {**C.MD5, archive: {f.name: hashlib.md5(f.read_bytes()).hexdigest()
                                for f in folder.iterdir()}}
    monkeypatch.setattr(C, "MD5", known)
    C.read_cifar10.cache_clear()
    C.read_cifar100.cache_clear()


def _fake_cifar100(shared: Path, root: Path, n_train: int = 3, n_test: int = 2) -> list[str]:
    """A CIFAR-100 python archive in torchvision's format; pixel (0, 0) red = fine label."""
    pairs = [p for s in ("train", "val", "test")
             for p in json.loads((shared / "cifarfs_split" / "torchmeta_json" / f"{s}.json").read_text())]
    fine = sorted(f for _, f in pairs)
    coarse = sorted({c for c, _ in pairs})
    to_coarse = {f: coarse.index(c) for c, f in pairs}
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for part, n in (("train", n_train), ("test", n_test)):
        labels = np.repeat(np.arange(100), n)
        data = np.zeros((len(labels), 3072), dtype=np.uint8)
        data[:, 0], data[:, 1024], data[:, 1] = labels, 7, 9  # R(0,0), G(0,0), R(0,1)
        blob = {"data": data, "fine_labels": labels.tolist(),
                "coarse_labels": [to_coarse[fine[i]] for i in labels]}
        (d / part).write_bytes(pickle.dumps(blob))
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": fine, "coarse_label_names": coarse}))
    return fine


def test_cifar_fs_and_fc100_from_python_archive(shared: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fine = _fake_cifar100(shared, tmp_path)
    _trust(monkeypatch, tmp_path / "cifar-100-python", "cifar100")
    seen = {}
    for name, counts in (("cifar_fs", (64, 16, 20)), ("fc100", (60, 20, 20))):
        d = cfg_of(dataset=name, root=str(tmp_path)).data
        for split, n_cls in zip(("train", "val", "test"), counts):
            ds = build_dataset(d, split)
            assert len(ds.classes) == n_cls and len(ds) == 5 * n_cls  # train + test merged
            px = np.stack([np.asarray(ds.load(i))[0, :2] for i in range(len(ds))])
            assert (px[:, 0, 1] == 7).all() and (px[:, 1, 0] == 9).all()  # CHW -> HWC
            assert [ds.classes[t] for t in ds.targets] == [fine[v] for v in px[:, 0, 0]]
            seen[name, split] = set(ds.classes)
    txt = _lines(shared / "cifarfs_split" / "train.txt")
    assert build_dataset(cfg_of(dataset="cifar_fs", root=str(tmp_path)).data, "train").classes == txt
    for name in ("cifar_fs", "fc100"):
        assert set.union(*(seen[name, s] for s in ("train", "val", "test"))) == set(fine)
    c100 = cfg_of(dataset="cifar100", root=str(tmp_path)).data
    assert len(build_dataset(c100, "train")) == 300 and len(build_dataset(c100, "test")) == 200


def test_cifar10_python_archive_preferred(shared: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):  # 2 images per batch file; pixel (0, 0) red = file number
        data = np.zeros((2, 3072), dtype=np.uint8)
        data[:, 0], data[:, 2048] = b, 200  # R(0,0), B(0,0)
        (d / name).write_bytes(pickle.dumps({"data": data, "labels": [b, 9 - b]}))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    _trust(monkeypatch, d, "cifar10")
    monkeypatch.setenv("KDRAY_DATA_PATH", str(shared))  # the JPEG tarballs are visible too
    cfg = cfg_of(dataset="cifar10", root=str(tmp_path)).data
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 10 and len(test) == 2 and train.classes[3] == "c3"
    assert train.targets == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5] and test.targets == [5, 4]
    px = np.asarray(train.load(7))[0, 0]
    assert px.tolist() == [3, 0, 200]


# ---------------------------------------------------------------------------- mini-ImageNet
def test_mini_imagenet_fake_folder(tmp_path: Path) -> None:
    from kdray.data.mini_imagenet import read_split

    files, wnids = read_split("val")
    classes = list(dict.fromkeys(wnids))
    blobs = []
    for c in range(len(classes)):  # one tiny PNG per class, colour = class index
        buf = io.BytesIO()
        Image.new("RGB", (12, 10), (c * 10, 5, 200)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    folder = tmp_path / "mini_imagenet" / "images"
    folder.mkdir(parents=True)
    for f, w in zip(files, wnids):
        (folder / f).write_bytes(blobs[classes.index(w)])
    cfg = ExperimentConfig().override({"data.dataset": "mini_imagenet", "data.root": str(tmp_path),
                                       "data.train_split": "val", "eval.split": "val",
                                       "data.image_size": 16})
    check_data(cfg)
    ds = build_dataset(cfg.data, "val")
    assert len(ds) == 9600 and len(ds.classes) == 16 and np.bincount(ds.targets).tolist() == [600] * 16
    for i in (0, 4321, 9599):
        assert np.asarray(ds.load(i))[0, 0, 0] == ds.targets[i] * 10
    x, y = build_eval_dataset(cfg)[4321]
    assert x.shape == (3, 16, 16) and y == ds.targets[4321]
    with pytest.raises(DataNotFoundError) as err:  # the train images are not there
        check_data(cfg.override({"data.train_split": "train"}))
    assert str(folder) in str(err.value) and "mini-imagenet-tools" in str(err.value)


# ---------------------------------------------------------------------------- errors, registry
def test_missing_data_errors_name_paths_and_how(tmp_path: Path) -> None:
    cases = {
        "omniglot": ["omniglot/images_background.npz", "omniglot-py/images_evaluation",
                     "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip"],
        "cifar10": ["cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10_jpg/cifar10_train.tar.gz",
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "CIFAR10("],
        "cifar_fs": ["cifar-100-python", "cifar100/cifar-100-python",
                     "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"],
    }
    for name, needles in cases.items():
        cfg = ExperimentConfig().override({"data.dataset": name, "data.root": str(tmp_path),
                                           "eval.split": "test"})
        with pytest.raises(DataNotFoundError) as err:
            check_data(cfg)
        msg = str(err.value)
        assert isinstance(err.value, FileNotFoundError) and "data.download=true" in msg
        for needle in needles:
            assert needle in msg, (name, needle)
        assert str(tmp_path / needles[0]) in msg
        with pytest.raises(DataNotFoundError):
            build_dataset(cfg.data, "train")
        assert str(pickle.loads(pickle.dumps(err.value))) == msg  # crosses process boundaries


def test_unknown_dataset_and_split_list_choices() -> None:
    with pytest.raises(ConfigError) as err:
        check_data(ExperimentConfig().override({"data.dataset": "imagenet21k"}))
    assert all(name in str(err.value) for name in DATASETS)
    with pytest.raises(ConfigError, match="'train', 'val', 'test'"):
        check_data(ExperimentConfig().override({"eval.split": "valid"}))
    with pytest.raises(ConfigError, match="data.train_split"):
        check_data(ExperimentConfig().override({"data.train_split": "all"}))
    with pytest.raises(ConfigError, match="'train', 'val', 'test'"):  # val: carved from train
        build_dataset(cfg_of(dataset="cifar10").data, "minival")
    ok = ExperimentConfig().override({"eval.kind": "none", "eval.split": "valid"})
    check_data(ok)  # the eval split is irrelevant without evaluation


def test_check_data_batch_geometry_and_class_counts() -> None:
    base = ExperimentConfig()
    with pytest.raises(ConfigError, match="divisible"):
        check_data(base.override({"data.batch_size": 30, "resources.num_workers": 4}))
    with pytest.raises(ConfigError, match="class_aware"):
        check_data(base.override({"data.batch_size": 32, "resources.num_workers": 2,
                                  "data.class_aware": 5}))
    with pytest.raises(ConfigError, match="eval.ways"):
        check_data(base.override({"eval.split": "val", "eval.ways": 17}))  # 16 val classes
    expected = {"synthetic_fs": 64, "omniglot": 4112, "omniglot_lake": 964, "cifar10": 10,
                "cifar100": 100,
                "cifar_fs": 64, "fc100": 60, "mini_imagenet": 64, "imagenet": 1000,
                # FSCIL protocols (kdray.data.fscil): split "train" = all classes ("base": 60 ...)
                "fscil_cifar100": 100, "fscil_mini_imagenet": 100, "fscil_cub200": 200,
                "fscil_synthetic": 100, "fscil_cifar10": 10, "coco128": 80, "coco": 80,
                "shapes_det": 3}
    assert {n: num_train_classes(base.override({"data.dataset": n})) for n in DATASETS} == expected


def test_cache_never_written_into_a_read_only_data_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only (mode r-x) data root stays untouched even for root; caches go to
    KDRAY_CACHE_DIR. A writable root gets the cache beside the data."""
    from kdray.config import DataConfig
    from kdray.data.base import cache_dir

    shared, writable = tmp_path / "shared", tmp_path / "mine"
    shared.mkdir()
    shared.chmod(0o555)
    monkeypatch.setenv("KDRAY_CACHE_DIR", str(tmp_path / "cache"))
    try:
        assert cache_dir(DataConfig(root=str(shared)), "cifar10_jpg") == tmp_path / "cache" / "cifar10_jpg"
        assert list(shared.iterdir()) == []
    finally:
        shared.chmod(0o755)
    assert cache_dir(DataConfig(root=str(writable / "deep")), "x") == writable / "deep" / "x"


def test_save_atomic_writes_whole_files_and_leaves_no_temporary(tmp_path, monkeypatch):
    from kdray.data.base import save_atomic

    save_atomic(tmp_path / "a.npy", np.arange(5))
    save_atomic(tmp_path / "b.npz", {"x": np.ones(2), "y": np.zeros(3)})
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.arange(5))
    assert np.load(tmp_path / "b.npz")["y"].shape == (3,)
    # a failed write leaves neither the target nor its temporary file behind
    monkeypatch.setattr(np, "save", lambda f, a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_atomic(tmp_path / "c.npy", np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npz"]
