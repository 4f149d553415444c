"""`make demo`, the README's first command, run for real: set-up, a one-epoch training, archive, serve, one
request, the picture, the server stopped. It runs in a copy of the repository with ports of its own, and
a model the user archived before (model_store/) must come out of it untouched."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import CONFIG, MODEL_NAME, ROOT
from scripts.server import TorchServe, free_ports, render_config

pytestmark = pytest.mark.integration

USERS_ARCHIVE = b"the archive of a model the user trained for hours"
DEMO_LIMIT = 2048  # training images: enough steps for ink on a dark ground in every digit of the picture


def copy_repository(dest: Path) -> None:
    """The working tree's files that git tracks or would track (no venv, no artifacts), times kept."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def test_make_demo_serves_its_own_model_and_keeps_the_users(tmp_path, data_dir):
    venv = Path(sys.prefix)
    if not (venv / ".installed").exists():
        pytest.skip("run through `make test`: the demo reuses its venv instead of installing one")
    repo = tmp_path / "repo"
    copy_repository(repo)
    ports = tuple(free_ports(4))
    (repo / "config.properties").write_text(render_config(CONFIG, ports, repo / "model_store"))
    users_archive = repo / "model_store" / f"{MODEL_NAME}.mar"
    users_archive.parent.mkdir(exist_ok=True)
    users_archive.write_bytes(USERS_ARCHIVE)
    # An outer `make test`'s command-line variables would reach the demo's own makes through MAKEFLAGS.
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    try:
        # LIMIT: the demo's one epoch on the first images only. The rest of the path is the user's: what the
        # training itself does is tested in test_train.py, and a full epoch here would add half a minute.
        done = subprocess.run(["make", "demo", f"VENV={venv}", f"DATA_DIR={data_dir.resolve()}", f"LIMIT={DEMO_LIMIT}"],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:  # a failed demo must not leave its server running
        TorchServe(repo / "artifacts" / "serve", config=repo / "config.properties").stop()

    picture = repo / "artifacts" / "predictions.png"
    assert str(picture) in done.stdout
    pixels = np.asarray(Image.open(picture).convert("L"), dtype=np.float32) / 255
    assert pixels.shape == (4 * 28 + 3 * 2,) * 2  # 16 digits: a 4 x 4 grid with 2-pixel gaps
    cells = [pixels[r * 30:r * 30 + 28, c * 30:c * 30 + 28] for r in range(4) for c in range(4)]
    assert all(cell.max() > 0.5 and cell.mean() < 0.5 for cell in cells)  # ink on a dark ground in each
    assert (repo / "artifacts" / "demo" / "model_store" / f"{MODEL_NAME}.mar").exists()
    assert users_archive.read_bytes() == USERS_ARCHIVE
    with socket.socket() as probe:  # and the server is gone
        assert probe.connect_ex(("127.0.0.1", ports[0])) != 0
