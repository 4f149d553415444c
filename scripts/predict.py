"""A small client: asks the running server for digits and saves them as a PNG grid.

    python -m scripts.predict --count 16 --seed 7 --digit 3
"""
import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

import requests
import torch

from train.artifacts import image_grid

ROOT = Path(__file__).resolve().parent.parent


def request_digits(url: str, key: str, count: int, seed: Optional[int] = None, digit: Optional[int] = None,
                   timeout: float = 30) -> torch.Tensor:
    """POSTs one request; returns count x 1 x 28 x 28 images, or raises with the server's message."""
    body = {"count": count}
    if seed is not None:
        body["seed"] = seed
    if digit is not None:
        body["digit"] = digit
    reply = requests.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
    if reply.status_code != 200:
        raise RuntimeError(f"{reply.status_code} from {url}: {reply.text.strip()}")
    return torch.tensor(reply.json()["images"]).unsqueeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080/predictions/mnist_gan")
    parser.add_argument("--key-file", type=Path, default=ROOT / "artifacts" / "serve" / "key_file.json",
                        help="TorchServe's key_file.json (written into the server's working directory)")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--digit", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "predictions.png")
    args = parser.parse_args()
    try:
        key = json.loads(args.key_file.read_text())["inference"]["key"]
    except FileNotFoundError:
        raise SystemExit(f"{args.key_file} not found: is the server running (`make serve`)?")
    try:
        images = request_digits(args.url, key, args.count, args.seed, args.digit)
    except (RuntimeError, requests.RequestException) as error:
        raise SystemExit(f"predict: {error}")
    title = f"{args.count} digits" + (f", digit {args.digit}" if args.digit is not None else "") + \
        (f", seed {args.seed}" if args.seed is not None else "")
    image_grid(images, max(1, math.ceil(math.sqrt(args.count))), args.out, title=title)
    print(f"{len(images)} digits from {args.url} saved to {args.out}", file=sys.stderr)
    print(args.out)


if __name__ == "__main__":
    main()
