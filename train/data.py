"""MNIST loading: the whole split as tensors in memory (batches are index slices, no DataLoader)."""
import hashlib
import socket
from pathlib import Path

import torch
from torchvision.datasets import MNIST

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MnistMissing(RuntimeError):
    pass


def raw_dir(data_dir: str | Path) -> Path:
    return Path(data_dir).resolve() / "MNIST" / "raw"


def _open_mnist(data_dir: str | Path, train: bool) -> MNIST:
    try:
        return MNIST(str(data_dir), train=train, download=False)
    except RuntimeError:
        pass
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)  # an offline machine must fail fast, not hang
    try:
        return MNIST(str(data_dir), train=train, download=True)
    except Exception as error:  # urllib, HTTP and checksum errors all mean the same here
        files = "\n".join(f"  {raw_dir(data_dir) / name}" for name in RAW_FILES)
        raise MnistMissing(
            f"MNIST is not in {raw_dir(data_dir)} and could not be downloaded ({error}).\n"
            f"Place the four raw MNIST files (uncompressed IDX, or the same names with .gz) here:\n{files}\n"
            "or point DATA_DIR (make) / --data-dir (python -m train) at a directory that has them "
            "in MNIST/raw/, e.g. DATA_DIR=../shared/data."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def load_mnist(data_dir: str | Path, train: bool = True, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 N x 1 x 28 x 28 in [0, 1] and labels as int64, the first `limit` if > 0."""
    dataset = _open_mnist(data_dir, train)
    images, labels = dataset.data, dataset.targets
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images.unsqueeze(1).float().div_(255), labels.long()


def data_checksum(data_dir: str | Path) -> str:
    """md5 of the raw training images: identifies the data a run was trained on."""
    path = raw_dir(data_dir) / "train-images-idx3-ubyte"
    if not path.exists():
        return "unknown"
    return hashlib.md5(path.read_bytes()).hexdigest()
