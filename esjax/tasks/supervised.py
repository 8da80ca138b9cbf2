"""Supervised data sets with a fixed train/test split: digits (bundled), user arrays, MNIST.

- :func:`load_digits`: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes,
  64 features scaled to [0, 1]); offline, the default task of the comparison runner.
- :func:`from_arrays`: any ``(x, y)`` arrays (or an explicit test set).
- :func:`load_mnist`: MNIST from the standard files at a path the user gives — ``mnist.npz``
  (keys ``x_train, y_train, x_test, y_test``) or the four IDX files, optionally gzipped.
  Nothing is ever downloaded.

Splits are stratified by class when the labels are integers and are a function of ``seed`` alone.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Dataset(NamedTuple):
    """A classification (or regression) data set split into train and test parts.

    Attributes:
      x_train, y_train: ``(n_train, features)`` float32 inputs and ``(n_train,)`` int32 labels
        (or float targets).
      x_test, y_test: the held-out part, same layout.
      num_classes: number of classes (0 for regression targets).
      name: a short description for reports.
    """

    x_train: jnp.ndarray
    y_train: jnp.ndarray
    x_test: jnp.ndarray
    y_test: jnp.ndarray
    num_classes: int
    name: str

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])


def split_indices(
    labels: np.ndarray, test_fraction: float, seed: int, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test index arrays; per-class shuffles (stratified) from ``numpy`` ``seed``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else []
    if not groups:
        groups = [np.arange(labels.shape[0])]
    train, test = [], []
    for group in groups:
        group = rng.permutation(group)
        num_test = int(round(test_fraction * group.size))
        test.append(group[:num_test])
        train.append(group[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _as_dataset(x_train, y_train, x_test, y_test, num_classes, name) -> Dataset:
    def targets(y):
        y = np.asarray(y)
        return jnp.asarray(y, jnp.int32 if num_classes else jnp.float32)

    return Dataset(
        x_train=jnp.asarray(np.asarray(x_train), jnp.float32),
        y_train=targets(y_train),
        x_test=jnp.asarray(np.asarray(x_test), jnp.float32),
        y_test=targets(y_test),
        num_classes=int(num_classes),
        name=name,
    )


def from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    name: str = "arrays",
) -> Dataset:
    """A :class:`Dataset` from user arrays.

    With ``x_test``/``y_test`` the split is the user's; otherwise ``test_fraction`` of ``(x, y)``
    is held out (stratified when ``y`` holds integer labels). ``num_classes`` defaults to
    ``max(y) + 1`` for integer labels and 0 (regression) for float targets.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have as many rows, got {x.shape[0]} and {y.shape[0]}")
    x = x.reshape(x.shape[0], -1)
    integer = np.issubdtype(y.dtype, np.integer)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if integer else 0
    if (x_test is None) != (y_test is None):
        raise ValueError("pass both x_test and y_test, or neither")
    if x_test is not None:
        x_test = np.asarray(x_test).reshape(np.shape(x_test)[0], -1)
        return _as_dataset(x, y, x_test, y_test, num_classes, name)
    train, test = split_indices(y, test_fraction, seed, stratify=integer)
    return _as_dataset(x[train], y[train], x[test], y[test], num_classes, name)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8×8 digits: 64 features in [0, 1], 10 classes, offline.

    The stratified split is fixed by ``seed`` (default: 1,437 train / 360 test images).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return from_arrays(
        digits.data / 16.0,
        digits.target.astype(np.int32),
        test_fraction=test_fraction,
        seed=seed,
        num_classes=10,
        name=f"digits (8x8, split seed {seed})",
    )


MNIST_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic ``00 00 dtype ndim``, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, _IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def load_mnist(path: str | Path) -> Dataset:
    """MNIST from local files: ``path`` is ``mnist.npz`` or a folder with it or the IDX files.

    Images are flattened to 784 features scaled to [0, 1]; the standard 60,000/10,000 split is
    kept. Raises ``FileNotFoundError`` saying which files to put where; nothing is downloaded.
    """
    path = Path(path).expanduser()
    npz = path if path.suffix == ".npz" else path / "mnist.npz"
    if npz.is_file():
        with np.load(npz) as data:
            missing = [k for k in MNIST_IDX_FILES if k not in data]
            if missing:
                raise ValueError(
                    f"{npz} lacks the arrays {missing}; it needs {list(MNIST_IDX_FILES)}"
                )
            arrays = {k: data[k] for k in MNIST_IDX_FILES}
    else:
        found = (
            {k: _find(path, stem) for k, stem in MNIST_IDX_FILES.items()} if path.is_dir() else {}
        )
        if not found or any(v is None for v in found.values()):
            raise FileNotFoundError(
                f"MNIST files not found at {path}. Put either mnist.npz (arrays x_train, y_train, "
                f"x_test, y_test) or the four IDX files {sorted(MNIST_IDX_FILES.values())} "
                "(optionally .gz) in that folder and pass its path; esjax never downloads data."
            )
        arrays = {k: read_idx(v) for k, v in found.items()}
    scale = 255.0 if np.asarray(arrays["x_train"]).dtype == np.uint8 else 1.0
    return from_arrays(
        np.asarray(arrays["x_train"], np.float32) / scale,
        np.asarray(arrays["y_train"], np.int32),
        x_test=np.asarray(arrays["x_test"], np.float32) / scale,
        y_test=np.asarray(arrays["y_test"], np.int32),
        num_classes=10,
        name="mnist",
    )


DATASETS = {"digits": load_digits, "mnist": load_mnist}


def load_dataset(name: str, **kwargs) -> Dataset:
    """``load_digits(**kwargs)`` or ``load_mnist(**kwargs)`` by name."""
    if name not in DATASETS:
        raise ValueError(f"dataset name must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](**kwargs)


__all__ = [
    "DATASETS",
    "Dataset",
    "MNIST_IDX_FILES",
    "from_arrays",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "read_idx",
    "split_indices",
]
