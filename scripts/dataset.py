"""`make dataset`: a synthetic MNIST from the running server, in MNIST's own IDX format.

    python -m scripts.dataset --count 60000 --seed 0 --out artifacts/dataset

Writes OUT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte and a .gz copy of each, so
`torchvision.datasets.MNIST(OUT)` (which reads the uncompressed files and wants both splits present
even to load one) and the loaders that read the .gz files take it in place of the real one. The digits
are written by hands of the served model: each hand (one noise vector of a request's seed, the `digits`
field) writes 0 to 9 once, so the digits are balanced, as MNIST's writers each wrote every digit.
Pixels are round(255 x value), the PNG answer's. The same counts and seed give byte-identical files;
a stopped run leaves the previous data set (or none), never a half-written one.
"""
import argparse
import gzip
import io
import random
import shutil
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import requests
from PIL import Image
from tqdm import tqdm

from handler.request_contract import MAX_COUNT, PNG_GAP
from scripts import ROOT, read_model_config
from scripts.client import Client, add_server_arguments, client_for

DIGITS = "0123456789"
HANDS_PER_REQUEST = MAX_COUNT // len(DIGITS)  # each writing 0-9: within the served limit of images a request
SPLITS = ("train", "t10k")  # MNIST's names for its training and test files
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # IDX: unsigned bytes, 3 and 1 dimensions


def requests_for(split: str, count: int, seed: int) -> list[dict]:
    """The request bodies that draw `count` digits of `split`: hands writing 0-9, the last one perhaps fewer.
    Each request's seed comes from (split, seed) alone, so a larger count begins with the same digits."""
    seeds = random.Random(f"{split}:{seed}")
    full_hands, rest = divmod(count, len(DIGITS))
    bodies = [{"count": min(HANDS_PER_REQUEST, full_hands - start), "digits": DIGITS}
              for start in range(0, full_hands, HANDS_PER_REQUEST)]
    if rest:
        bodies.append({"count": 1, "digits": DIGITS[:rest]})
    return [{**body, "seed": seeds.getrandbits(63)} for body in bodies]


def tiles(png: bytes, hands: int, length: int) -> np.ndarray:
    """A number PNG's digits, hand by hand: hands*length x 28 x 28 uint8 (rows PNG_GAP apart, digits abutting)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    row = 28 + PNG_GAP
    return np.stack([pixels[hand * row:hand * row + 28, position * 28:(position + 1) * 28]
                     for hand in range(hands) for position in range(length)])


def idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">IIII", IMAGES_MAGIC, len(images), 28, 28) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", LABELS_MAGIC, len(labels)) + labels.astype(np.uint8).tobytes()


def draw_split(client: Client, split: str, count: int, seed: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` images and labels of `split`, asked of the server `workers` requests at a time (one per worker)."""
    bodies = requests_for(split, count, seed)

    def ask(body: dict) -> np.ndarray:
        return tiles(client.png(body), body["count"], len(body["digits"]))

    with ThreadPoolExecutor(workers) as pool, tqdm(total=count, desc=f"{split} digits", unit="digit") as bar:
        images = []
        for body, drawn in zip(bodies, pool.map(ask, bodies)):  # in order, whatever order they finish in
            images.append(drawn)
            bar.update(len(drawn))
    labels = np.array([int(d) for body in bodies for _ in range(body["count"]) for d in body["digits"]])
    return np.concatenate(images), labels


def files(images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file of the data set: each IDX file and its .gz copy."""
    for split in SPLITS:
        for name, data in ((f"{split}-images-idx3-ubyte", idx_images(images[split])),
                           (f"{split}-labels-idx1-ubyte", idx_labels(labels[split]))):
            yield name, data
            buffer = io.BytesIO()
            with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as packed:  # mtime=0: reruns are byte-identical
                packed.write(data)
            yield name + ".gz", buffer.getvalue()


def write_dataset(out: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> Path:
    """Writes the files into a folder beside OUT/MNIST/raw, then puts it in raw's place in one rename."""
    raw = out / "MNIST" / "raw"
    partial, old = raw.with_name("raw.partial"), raw.with_name("raw.old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, data in files(images, labels):
        (partial / name).write_bytes(data)
    if raw.exists():
        shutil.rmtree(old, ignore_errors=True)
        raw.rename(old)
    partial.rename(raw)
    shutil.rmtree(old, ignore_errors=True)
    return raw


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=60_000, help="training digits (MNIST has 60,000)")
    parser.add_argument("--test-count", type=int, help="test digits (default: count / 6, MNIST's 10,000 to 60,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "dataset")
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    counts = {"train": args.count, "t10k": max(1, args.count // 6) if args.test_count is None else args.test_count}
    if min(counts.values()) < 1 or args.seed < 0:
        parser.error("the counts must be 1 or more, and the seed 0 or more")
    client = client_for(args)
    workers = read_model_config()["minWorkers"]
    images, labels = {}, {}
    try:
        for split in SPLITS:
            images[split], labels[split] = draw_split(client, split, counts[split], args.seed, workers)
    except (RuntimeError, requests.RequestException) as error:
        raise SystemExit(f"dataset: {error}")
    raw = write_dataset(args.out, images, labels)
    print(f"{counts['train']:,} training and {counts['t10k']:,} test digits from {client.url} (seed {args.seed}) "
          f"written to {raw}; torchvision.datasets.MNIST({str(args.out)!r}) reads them", file=sys.stderr)
    print(raw)


if __name__ == "__main__":
    main()
