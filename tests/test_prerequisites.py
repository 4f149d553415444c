"""`make install`'s first step: what the project needs from outside Python is there, or is named with the
command that installs it, before anything else runs (scripts/prerequisites.py)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import ROOT
from scripts.prerequisites import java_major

MAKE = shutil.which("make")
# A real interpreter, not a shim script: the PATH below holds nothing else to run one with.
PYTHON = os.path.realpath(sys.executable)


def make_install_with_only(tmp_path: Path, tools: dict[str, str], target: str = "install") -> subprocess.CompletedProcess:
    """`make install` (or `target`) into a new venv with a PATH that holds python3 and `tools` alone (name -> path or script):
    no apt-get on it, so nothing can be installed and every missing tool must be named."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(PYTHON)
    for name, tool in tools.items():
        if tool.startswith("#!"):
            (bin_dir / name).write_text(tool)
            (bin_dir / name).chmod(0o755)
        else:
            (bin_dir / name).symlink_to(tool)
    return subprocess.run([MAKE, "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}", f"PYTHON={bin_dir / 'python3'}"],
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60)


def test_missing_tools_are_named_with_their_install_command_before_a_venv_is_made(tmp_path):
    done = make_install_with_only(tmp_path, {})
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert lines == [
        "java is missing (TorchServe's frontend runs on it): install it with `sudo apt-get install openjdk-17-jre-headless`",
        "haproxy is missing (the Kubernetes pods' proxy, which the deployment tests run): "
        "install it with `sudo apt-get install haproxy`"]
    assert not (tmp_path / "venv").exists()


def test_make_test_names_the_browser_too_before_installing_anything(tmp_path):
    done = make_install_with_only(tmp_path, {}, target="test")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert [line.split(" ")[0] for line in lines] == ["java", "haproxy", "chromium"]
    assert lines[2] == ("chromium is missing (the browser that tests the playground page): "
                        "install it with `sudo apt-get install chromium`")
    assert not (tmp_path / "venv").exists()


def test_a_java_too_old_is_refused_with_its_version(tmp_path):
    old_java = "#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n"
    done = make_install_with_only(tmp_path, {"java": old_java, "haproxy": "/bin/true"})
    assert done.returncode != 0
    assert "java is version 11.0.22, too old (17 or newer needed)" in done.stderr
    assert "apt-get install openjdk-17-jre-headless" in done.stderr and "haproxy" not in done.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("output,major", [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('java version "1.8.0_392"', 8),
    ('openjdk version "21" 2023-09-19', 21),
    ('openjdk version "25.0.1" 2025-10-21 LTS', 25),
    ("no version here", None),
])
def test_java_major_version(output, major):
    assert java_major(output) == major
