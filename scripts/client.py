"""How the tools (make predict, make dataset, the playground) ask a running TorchServe for digits.

TorchServe's inference key expires (token_expiration_min, 60 minutes by default) and the server then answers
400 "Token Authorization failed". A Client reads the key from the server's key_file.json for each request, and
when the key it sent has expired, gets the server a new one from the management API with the API key (which does
not expire; TorchServe writes the new key into key_file.json), then asks again. No torch here: the clients start
without it.
"""
import argparse
import fcntl
import json
import re
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import requests

from scripts import CONFIG, MODEL_NAME, ROOT, read_properties

PNG = "image/png"
REFUSED_KEY = "Token Authorization failed"  # TorchServe's answer to a missing, wrong or expired key
CLOCK_SLACK = timedelta(seconds=2)  # a key this close to its expiry counts as expired


class Client:
    """Prediction requests to one TorchServe, with its inference key from `key_file`, renewed when it expires."""

    def __init__(self, url: str, key_file: Path, management_url: str) -> None:
        self.url, self.key_file, self.management_url = url, Path(key_file), management_url
        self._renewing = threading.Lock()  # one renewal at a time: in this process ...

    def keys(self) -> dict:
        """key_file.json: {"inference": {"key", "expiration time"}, "management": {...}, "API": {"key"}}."""
        return json.loads(self.key_file.read_text())

    def post(self, body: dict, accept: str = PNG, timeout: float = 30) -> requests.Response:
        """POSTs one request body; when the key it sent has expired, renews it and sends the request once more."""
        key = self.keys()["inference"]["key"]
        reply = self._send(body, key, accept, timeout)
        if reply.status_code == 400 and REFUSED_KEY in reply.text and self.renew(key):
            reply = self._send(body, self.keys()["inference"]["key"], accept, timeout)
        return reply

    def _send(self, body: dict, key: str, accept: str, timeout: float) -> requests.Response:
        return requests.post(self.url, json=body, headers={"Authorization": f"Bearer {key}", "Accept": accept},
                             timeout=timeout)

    def renew(self, refused: str) -> bool:
        """True when there is another key to try than `refused`: the file already holds a new one (another client
        renewed it, or the server restarted), or `refused` had expired and the management API made a new one."""
        with self._renewing, self._renewal_lock():
            keys = self.keys()
            if keys["inference"]["key"] != refused:
                return True
            if datetime.now(timezone.utc) < expiry(keys["inference"]["expiration time"]) - CLOCK_SLACK:
                return False  # a wrong key, not an old one: the caller reports TorchServe's answer
            reply = requests.post(f"{self.management_url}/token", params={"type": "inference"},
                                  headers={"Authorization": f"Bearer {keys['API']['key']}"}, timeout=30)
            return reply.status_code == 200 and self.keys()["inference"]["key"] != refused

    @contextmanager
    def _renewal_lock(self) -> Iterator[None]:
        """... and in every process that renews this server's key (make dataset beside the page): each new key ends
        the one before, so a second client renewing at once would end the first's. A lock file beside key_file.json,
        held while the key is checked and renewed; the next client then finds the new key there."""
        with open(self.key_file.with_name(self.key_file.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def png(self, body: dict, timeout: float = 30) -> bytes:
        """The PNG for one request body, or RuntimeError with the server's message."""
        reply = self.post(body, PNG, timeout)
        if reply.status_code != 200:
            raise RuntimeError(f"{reply.status_code} from {self.url}: {reply.text.strip()}")
        return reply.content


def expiry(text: str) -> datetime:
    """A key's "expiration time" as TorchServe writes it (Java's Instant: 2026-12-06T10:23:51.123456789Z)."""
    whole, fraction = re.fullmatch(r"([^.Z]+)(?:\.(\d+))?Z", text).groups()
    return datetime.fromisoformat(whole).replace(tzinfo=timezone.utc) + timedelta(seconds=float(f"0.{fraction or 0}"))


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which running server to ask: --url, --management-url, --config, --key-file."""
    parser.add_argument("--url", help="the model's prediction URL (default: config.properties' inference address)")
    parser.add_argument("--management-url", help="where a new key is asked for when one expires (default: "
                                                 "config.properties' management address)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--key-file", type=Path, default=ROOT / "artifacts" / "serve" / "key_file.json",
                        help="TorchServe's key_file.json (written into the server's working directory)")


def client_for(args: argparse.Namespace) -> Client:
    """The Client that add_server_arguments' options name; exits if no server wrote a key file there."""
    props: dict[str, Any] = read_properties(args.config)
    if not args.key_file.exists():
        raise SystemExit(f"{args.key_file} not found: is the server running (`make serve`)?")
    return Client(args.url or f"{props['inference_address']}/predictions/{MODEL_NAME}", args.key_file,
                  args.management_url or props["management_address"])

