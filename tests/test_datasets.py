"""Tests of fedsim.data.datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.data import DATASETS, load_dataset, to_float
from fedsim.errors import ConfigError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _shared_or_skip() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"no ../shared/data: {SHARED_DATA} does not hold MNIST/raw")
    return SHARED_DATA


def test_registered_names() -> None:
    assert set(DATASETS.names()) >= {
        "digits",
        "mnist",
        "fashion_mnist",
        "emnist",
        "cifar10",
        "cifar100",
        "svhn",
    }


def test_digits_shapes_and_split() -> None:
    d = load_dataset("digits")
    assert d.name == "digits"
    assert d.train_x.dtype == torch.uint8 and d.test_x.dtype == torch.uint8
    assert d.train_y.dtype == torch.int64 and d.test_y.dtype == torch.int64
    assert d.train_x.shape[1:] == (1, 8, 8) and d.test_x.shape[1:] == (1, 8, 8)
    assert d.train_x.is_contiguous() and d.test_x.is_contiguous()
    assert d.in_channels == 1 and d.image_size == 8 and d.num_classes == 10
    assert len(d.train_y) + len(d.test_y) == 1797
    assert len(d.test_y) == 360  # ceil(0.2 * 1797)
    assert int(d.train_x.max()) == 255 and int(d.train_x.min()) == 0
    # pixel values are round(v * 255 / 16) of integers v in 0..16
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(d.train_x).tolist()) <= allowed
    # stratified: each class is ~20% test
    tr = np.bincount(d.train_y.numpy(), minlength=10)
    te = np.bincount(d.test_y.numpy(), minlength=10)
    frac = te / (tr + te)
    assert np.all(np.abs(frac - 0.2) < 0.01)
    # disjoint split: no image (with its label) appears in both
    rows = {(bytes(x.numpy()), int(y)) for x, y in zip(d.train_x, d.train_y, strict=True)}
    dup = sum((bytes(x.numpy()), int(y)) in rows for x, y in zip(d.test_x, d.test_y, strict=True))
    assert dup <= 2  # load_digits itself holds a couple of duplicate images


def test_digits_matches_sklearn() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_dataset("digits")
    raw = load_digits()
    idx = np.arange(len(raw.target))
    tr, te = train_test_split(idx, test_size=0.2, stratify=raw.target, random_state=0)
    conv = np.rint(raw.images * 255 / 16).astype(np.uint8)[:, None]
    assert np.array_equal(d.train_x.numpy(), conv[np.sort(tr)])
    assert np.array_equal(d.test_y.numpy(), raw.target[np.sort(te)])
    assert int(d.train_x[0, 0, 0, 2]) == 80  # sample 0 is in train; raw 5 -> round(79.6875)


def test_loaded_once() -> None:
    assert load_dataset("digits") is load_dataset("digits", root="data")


def test_stats_and_to_float() -> None:
    d = load_dataset("digits")
    xf = d.train_x.to(torch.float64) / 255
    assert d.mean[0] == pytest.approx(float(xf.mean()), abs=1e-6)
    assert d.std[0] == pytest.approx(float(xf.std(unbiased=False)), abs=1e-6)
    z = to_float(d.train_x, d.mean, d.std)
    assert z.dtype == torch.float32 and z.shape == d.train_x.shape
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(z.std()) == pytest.approx(1.0, abs=1e-3)


def test_to_float_per_channel_hand_computed() -> None:
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # [1, 2, 1, 2]
    z = to_float(x, (0.5, 0.2), (0.5, 0.1))
    expected = torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]])
    assert torch.allclose(z, expected, atol=1e-6)
    assert torch.allclose(to_float(x[0], (0.5, 0.2), (0.5, 0.1)), expected[0], atol=1e-6)


def test_missing_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist", root=str(tmp_path), download=False)
    msg = str(info.value)
    assert str(tmp_path) in msg and "download" in msg and "MNIST/raw" in msg
    assert "\n" not in msg


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(ConfigError, match="digits"):
        load_dataset("imagenet")


def test_mnist_from_shared() -> None:
    root = _shared_or_skip()
    d = load_dataset("mnist", root=str(root))
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.num_classes == 10 and d.in_channels == 1 and d.image_size == 28
    assert int((d.train_y == 0).sum()) == 5923 and int((d.test_y == 0).sum()) == 980
    assert d.mean[0] == pytest.approx(0.1307, abs=1e-4)
    assert d.std[0] == pytest.approx(0.3081, abs=1e-4)


def test_fashion_mnist_from_shared() -> None:
    root = _shared_or_skip()
    if not (root / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"no ../shared/data: {root} does not hold FashionMNIST/raw")
    d = load_dataset("fashion_mnist", root=str(root))
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(d.train_y.numpy()).tolist() == [6000] * 10
    assert np.bincount(d.test_y.numpy()).tolist() == [1000] * 10


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = (0x0800 + arr.ndim).to_bytes(4, "big")
    header += b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_idx_reader_matches_torchvision(tmp_path: Path) -> None:
    from torchvision.datasets import MNIST

    from fedsim.data.datasets import IDX_FILES, load_dataset, read_idx_split

    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sizes = {"train": 12, "t10k": 5}
    for name in IDX_FILES:
        n = sizes[name.split("-")[0]]
        arr = rng.integers(0, 256, (n, 28, 28)) if "images" in name else rng.integers(0, 10, n)
        _write_idx(raw / name, arr)
    ours = read_idx_split(str(raw))
    assert ours is not None
    tv_train = MNIST(str(tmp_path), train=True, download=False)
    tv_test = MNIST(str(tmp_path), train=False, download=False)
    for mine, theirs in zip(
        ours, (tv_train.data, tv_train.targets, tv_test.data, tv_test.targets), strict=True
    ):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)
    d = load_dataset("mnist", root=str(tmp_path), download=False)
    assert d.train_x.shape == (12, 1, 28, 28) and torch.equal(d.test_y, tv_test.targets)
    (raw / IDX_FILES[3]).write_bytes(b"\x00\x00\x09\x01" + b"\x00" * 8)
    with pytest.raises(ConfigError, match="not an idx file"):
        read_idx_split(str(raw))


def test_channel_stats_from_histograms() -> None:
    import torch

    from fedsim.data.datasets import _channel_stats

    half = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1)
    assert _channel_stats(half) == ((0.5,), (0.5,))  # values 0 and 1: mean 1/2, std 1/2
    x = torch.randint(0, 256, (7, 3, 5, 4), generator=torch.Generator().manual_seed(0))
    x = x.to(torch.uint8)
    mean, std = _channel_stats(x)
    ref = x.to(torch.float64).div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(ref.mean(dim=1).tolist(), abs=1e-12)
    assert std == pytest.approx(ref.std(dim=1, unbiased=False).tolist(), abs=1e-12)
