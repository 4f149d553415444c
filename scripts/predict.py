"""A small client: asks the running server for digits as a PNG (Accept: image/png) and saves it.

    python -m scripts.predict --count 16 --seed 7 --digit 3
    python -m scripts.predict --count 4 --seed 7 --digits 02139   # four hands, each writing 02139
"""
import argparse
import sys
from pathlib import Path
from typing import Optional

import requests

from scripts import ROOT
from scripts.client import add_server_arguments, client_for
from train.files import write_bytes


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--digit", type=int)
    parser.add_argument("--digits", help="a number each of the --count hands writes, e.g. 02139")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "predictions.png")
    args = parser.parse_args(argv)
    client = client_for(args)
    try:
        fields = {"count": args.count, "seed": args.seed, "digit": args.digit, "digits": args.digits}
        png = client.png({name: value for name, value in fields.items() if value is not None})
    except (RuntimeError, requests.RequestException) as error:
        raise SystemExit(f"predict: {error}")
    write_bytes(png, args.out)
    what = f"{args.count} hand(s) writing {args.digits}" if args.digits else f"{args.count} digits"
    print(f"{what} from {client.url} saved to {args.out}", file=sys.stderr)
    print(args.out)


if __name__ == "__main__":
    main()
