"""The Makefile's variables mean the same whether given on the command line or in the environment."""
import os
import subprocess

import pytest

from scripts import ROOT

MODULES = {"dataset": "scripts.dataset", "predict": "scripts.predict", "train": "train", "archive": "scripts.archive"}


def dry_run(target: str, arguments: tuple[str, ...] = (), **environment: str) -> str:
    """The command lines `make -n target` would run, with `environment` set (and no outer make's variables)."""
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "N", "OUT")}
    done = subprocess.run(["make", "-n", target, *arguments], cwd=ROOT, env={**env, **environment},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return next(line for line in done.stdout.splitlines() if f"-m {MODULES[target]} " in line)


@pytest.mark.parametrize("target,variables,expected", [
    ("dataset", {"N": "1000", "OUT": "/tmp/set"}, "--count 1000 --seed 0 --out /tmp/set"),
    ("dataset", {}, "--count 60000 --seed 0 --out artifacts/dataset"),
    ("predict", {"N": "3"}, "--count 3"),
    ("predict", {}, "--count 16"),
    ("train", {"OUT": "/tmp/run"}, "--out-dir /tmp/run"),
    ("archive", {"OUT": "/tmp/run"}, "--weights /tmp/run/generator.pt"),
])
def test_a_variable_means_the_same_from_the_environment_as_from_the_command_line(target, variables, expected):
    from_environment = dry_run(target, **variables)
    from_command_line = dry_run(target, tuple(f"{name}={value}" for name, value in variables.items()))
    assert expected in from_environment and from_environment == from_command_line
