"""Starts and stops a TorchServe that serves the model store, each in its own working directory.

    python -m scripts.server start --workdir artifacts/serve   # returns once the model answers
    python -m scripts.server stop --workdir artifacts/serve

TorchServe writes logs/ and key_file.json into its working directory and keeps its PID
file in $TMPDIR, so every server gets its own of both: two servers never stop each other.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import requests

from scripts import CONFIG, MODEL_NAME, ROOT, hand_route, read_properties
from scripts.client import Client

ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
FRONTEND_CLASS = b"org.pytorch.serve.ModelServer"  # the Java main class, in the frontend's command line


def configured_ports(config: Path = CONFIG) -> tuple[int, ...]:
    """The inference, management and metrics ports that `config` gives."""
    props = read_properties(config)
    return tuple(urlsplit(props[key]).port for key in ADDRESS_KEYS)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def render_config(template: Path, ports: tuple[int, ...], model_store: Path,
                  overrides: Optional[dict[str, str]] = None) -> str:
    """The shipped config.properties with its ports, model store and `overrides` replaced."""
    values = {key: f"http://127.0.0.1:{port}" for key, port in zip(ADDRESS_KEYS, ports)}
    if len(ports) > 3:  # a second server: its workers (/tmp/.ts.sock.<port>) and gRPC need ports of their own
        values["initial_worker_port"] = str(ports[3])
        values["grpc_inference_port"], values["grpc_management_port"] = map(str, free_ports(2))
    values["model_store"] = str(model_store.resolve())
    values.update(overrides or {})
    lines, seen = [], set()
    for line in template.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and key in values:
            line, seen = f"{key}={values[key]}", seen | {key}
        lines.append(line)
    lines += [f"{key}={value}" for key, value in values.items() if key not in seen]
    return "\n".join(lines) + "\n"


def proc_stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name: state, ppid, ... (OSError if it is gone).
    The name may hold spaces and parentheses, so the split is after its last closing parenthesis."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    try:
        return proc_stat(pid)[0] != "Z"
    except OSError:
        return False


class TorchServe:
    """One TorchServe process tree, owned by `workdir`."""

    def __init__(self, workdir: Path, model_store: Path = ROOT / "model_store",
                 config: Path = CONFIG, ports: Optional[tuple[int, ...]] = None,
                 overrides: Optional[dict[str, str]] = None, env: Optional[dict[str, str]] = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.model_store, self.config = Path(model_store), Path(config)
        self.ports = tuple(ports) if ports else configured_ports(self.config)
        self.overrides, self.extra_env = overrides or {}, env or {}

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[2]}"

    @property
    def predict_url(self) -> str:
        return f"{self.inference_url}/predictions/{MODEL_NAME}"

    @property
    def hand_url(self) -> str:
        """The hand route: uploads of what a person wrote (its own queue and workers)."""
        return f"{self.inference_url}/predictions/{hand_route()}"

    def _env(self) -> dict[str, str]:
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp), "LOG_LOCATION": str(self.workdir / "logs"),
               "METRICS_LOCATION": str(self.workdir / "logs"), **self.extra_env}
        venv_bin = str(Path(sys.executable).parent)  # the worker must run this interpreter
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        return env

    def _torchserve(self, *args: str) -> subprocess.CompletedProcess:
        executable = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
        # Output goes to a file, not a pipe: the Java frontend inherits it and outlives this call.
        with open(self.workdir / "torchserve.out", "a") as out:
            return subprocess.run([executable, *args], cwd=self.workdir, env=self._env(), stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=60)

    def pid(self) -> Optional[int]:
        """The frontend's PID from TorchServe's PID file, or None. The file outlives a crash or a reboot, and
        its number may since belong to another process: it counts only while it names a TorchServe frontend."""
        try:
            pid = int((self.workdir / "tmp" / ".model_server.pid").read_text().strip())
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if FRONTEND_CLASS in command.split(b"\0") and _alive(pid) else None

    def worker_pids(self, model: Optional[str] = None) -> list[int]:
        """The PIDs of this server's Python workers: the frontend's child processes; or of one model's (registered
        name) only, as the management API describes it."""
        if model is not None:
            reply = requests.get(f"{self.management_url}/models/{model}", headers=self.headers("management"), timeout=10)
            reply.raise_for_status()
            return [int(worker["pid"]) for version in reply.json() for worker in version["workers"] if worker.get("pid")]
        frontend = self.pid()
        if frontend is None:
            return []
        children = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if int(proc_stat(entry.name)[1]) == frontend:
                    children.append(int(entry.name))
            except OSError:
                continue
        return children

    def keys(self) -> dict[str, str]:
        """{"inference": key, "management": key, "API": key} from key_file.json."""
        data = json.loads((self.workdir / "key_file.json").read_text())
        return {name: entry["key"] for name, entry in data.items()}

    def headers(self, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys()[kind]}"}

    def start(self, timeout: float = 180) -> None:
        """Starts the server and returns once a real prediction request answers 200."""
        if self.pid():
            raise RuntimeError(f"a TorchServe owned by {self.workdir} is already running (pid {self.pid()})")
        for port in self.ports:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise RuntimeError(f"port {port} on 127.0.0.1 is in use: stop what runs there or pick other ports")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "key_file.json").unlink(missing_ok=True)  # keys are new at every start
        config = self.workdir / "config.properties"
        config.write_text(render_config(self.config, self.ports, self.model_store, self.overrides))
        result = self._torchserve("--start", "--ncs", "--ts-config", str(config),
                                  "--model-store", str(self.model_store.resolve()))
        if result.returncode != 0:
            raise RuntimeError(f"torchserve --start failed; see {self.workdir / 'torchserve.out'}")
        self.wait_ready(timeout)

    def client(self, url: Optional[str] = None) -> Client:
        """A Client of this server's digits route (or of `url`: its hand route, say): its key from key_file.json,
        renewed when it expires."""
        return Client(url or self.predict_url, self.workdir / "key_file.json", self.management_url)

    def probe(self) -> requests.Response:
        """The real request that says the model answers (a subclass may send another kind). Through a Client: with
        keys that live less than a start takes (token_expiration_min), the first key has expired by the time the
        model answers."""
        body = {"count": 1, "seed": 0}
        if not (self.workdir / "key_file.json").exists():  # not written yet, or token authorization is off
            return requests.post(self.predict_url, json=body, headers=self.headers(), timeout=10)
        return self.client().post(body, accept="application/json", timeout=10)

    def __enter__(self) -> "TorchServe":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 180) -> None:
        deadline, last = time.monotonic() + timeout, "no answer yet"
        while time.monotonic() < deadline:
            if self.pid() is None and time.monotonic() > deadline - timeout + 5:
                raise RuntimeError(f"TorchServe exited during start-up; see {self.workdir / 'logs'}")
            try:
                reply = self.probe()
                if reply.status_code == 200:
                    return
                last = f"{reply.status_code} {reply.text[:200]}"
            except (OSError, KeyError, ValueError, requests.RequestException) as error:
                last = repr(error)
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"TorchServe did not answer within {timeout:.0f} s (last: {last}); "
                           f"see {self.workdir / 'logs'}")

    def stop(self, timeout: float = 60) -> None:
        """Stops this server (and only this one); returns once the frontend and its workers are gone."""
        pid = self.pid()
        if pid is None:
            return
        processes = [pid, *self.worker_pids()]
        self._torchserve("--stop")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(map(_alive, processes)):
            time.sleep(0.2)
        for leftover in filter(_alive, processes):  # ignored the stop: end it
            os.kill(leftover, signal.SIGKILL)
        # The PID file can outlive a killed server; a stale one would make pid() guess wrong later.
        (self.workdir / "tmp" / ".model_server.pid").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--workdir", type=Path, default=ROOT / "artifacts" / "serve")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--config", type=Path, default=CONFIG)
    args = parser.parse_args()
    server = TorchServe(args.workdir, args.model_store, args.config)
    if args.action == "start":
        if not (args.model_store / f"{MODEL_NAME}.mar").exists():
            raise SystemExit(f"{args.model_store / (MODEL_NAME + '.mar')} is missing: run `make archive` first")
        try:
            server.start()
        except (RuntimeError, TimeoutError) as error:
            raise SystemExit(f"serve: {error}")
        print(f"TorchServe is serving {server.predict_url} (pid {server.pid()}); "
              f"inference key in {server.workdir / 'key_file.json'}; logs in {server.workdir / 'logs'}")
    elif args.action == "stop":
        was = server.pid()
        server.stop()
        print(f"stopped TorchServe (pid {was})" if was else "no TorchServe running from " + str(server.workdir))
    else:
        pid = server.pid()
        print(f"running (pid {pid}) at {server.inference_url}" if pid else "not running")


if __name__ == "__main__":
    main()
