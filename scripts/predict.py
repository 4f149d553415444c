"""A small client: asks the running server for digits as a PNG (Accept: image/png) and saves it.

    python -m scripts.predict --count 16 --seed 7 --digit 3
    python -m scripts.predict --count 4 --seed 7 --digits 02139   # four hands, each writing 02139
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import requests

from scripts import CONFIG, MODEL_NAME, ROOT, read_properties
from train.files import write_bytes


def request_png(url: str, key: str, body: dict, timeout: float = 30) -> bytes:
    """POSTs one request body asking for a PNG; returns its bytes, or raises with the server's message."""
    reply = requests.post(url, json=body, headers={"Authorization": f"Bearer {key}", "Accept": "image/png"},
                          timeout=timeout)
    if reply.status_code != 200:
        raise RuntimeError(f"{reply.status_code} from {url}: {reply.text.strip()}")
    return reply.content


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which running server to ask: --url, --config, --key-file."""
    parser.add_argument("--url", help="the model's prediction URL (default: config.properties' inference address)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--key-file", type=Path, default=ROOT / "artifacts" / "serve" / "key_file.json",
                        help="TorchServe's key_file.json (written into the server's working directory)")


def server_url_and_key(args: argparse.Namespace) -> tuple[str, str]:
    """The prediction URL and inference key that add_server_arguments' options name; exits if no server wrote a key."""
    url = args.url or f"{read_properties(args.config)['inference_address']}/predictions/{MODEL_NAME}"
    try:
        return url, json.loads(args.key_file.read_text())["inference"]["key"]
    except FileNotFoundError:
        raise SystemExit(f"{args.key_file} not found: is the server running (`make serve`)?")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--digit", type=int)
    parser.add_argument("--digits", help="a number each of the --count hands writes, e.g. 02139")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "predictions.png")
    args = parser.parse_args(argv)
    url, key = server_url_and_key(args)
    try:
        fields = {"count": args.count, "seed": args.seed, "digit": args.digit, "digits": args.digits}
        png = request_png(url, key, {name: value for name, value in fields.items() if value is not None})
    except (RuntimeError, requests.RequestException) as error:
        raise SystemExit(f"predict: {error}")
    write_bytes(png, args.out)
    what = f"{args.count} hand(s) writing {args.digits}" if args.digits else f"{args.count} digits"
    print(f"{what} from {url} saved to {args.out}", file=sys.stderr)
    print(args.out)


if __name__ == "__main__":
    main()
