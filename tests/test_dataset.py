"""`make dataset`: a synthetic MNIST asked of a real TorchServe, read back by torchvision's own MNIST loader."""
import gzip

import numpy as np
import pytest
import requests
import torchvision

from scripts.client import Client
from scripts.dataset import main, requests_for

pytestmark = pytest.mark.integration

TRAIN, TEST = 53, 20  # 5 hands and 3 digits of a sixth; 2 hands


def make_dataset(server, out, seed=3, train=TRAIN, url=None):
    main(["--url", url or server.predict_url, "--key-file", str(server.workdir / "key_file.json"), "--count", str(train),
          "--test-count", str(TEST), "--seed", str(seed), "--out", str(out)])
    return out / "MNIST" / "raw"


def test_torchvision_reads_the_servers_digits_with_the_labels_asked_for(server, tmp_path):
    raw = make_dataset(server, tmp_path / "set")
    train = torchvision.datasets.MNIST(tmp_path / "set", train=True)
    test = torchvision.datasets.MNIST(tmp_path / "set", train=False)
    assert (len(train), len(test)) == (TRAIN, TEST)
    assert train.targets.tolist() == [int(d) for d in "0123456789" * 5 + "012"]  # balanced: each hand writes 0-9
    assert test.targets.tolist() == list(range(10)) * 2
    # The pixels are the server's own: round(255 x value) of the JSON answer to the same requests.
    first, last = requests_for("train", TRAIN, 3)[0], requests_for("train", TRAIN, 3)[-1]
    assert (first["count"], first["digits"], last["count"], last["digits"]) == (5, "0123456789", 1, "012")
    answers = [requests.post(server.predict_url, json=body, headers=server.headers(), timeout=30).json()["images"]
               for body in (first, last)]
    expected = np.concatenate([np.rint(255 * np.asarray(a, dtype=np.float64)).reshape(-1, 28, 28) for a in answers])
    assert np.array_equal(train.data.numpy(), expected.astype(np.uint8))
    assert train.data.float().mean((1, 2)).min() > 1  # no blank tile: each is a digit cut from the right place
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert gzip.decompress((raw / f"{name}.gz").read_bytes()) == (raw / name).read_bytes()


def test_the_same_count_and_seed_give_byte_identical_files(server, tmp_path):
    first, again = make_dataset(server, tmp_path / "a"), make_dataset(server, tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert len(names) == 8 and names == sorted(p.name for p in again.iterdir())
    assert all((first / n).read_bytes() == (again / n).read_bytes() for n in names)
    other = make_dataset(server, tmp_path / "c", seed=4)
    assert (other / "train-images-idx3-ubyte").read_bytes() != (first / "train-images-idx3-ubyte").read_bytes()


def test_a_stopped_run_leaves_the_previous_data_set_whole(server, tmp_path, monkeypatch):
    raw = make_dataset(server, tmp_path / "set")
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    asked = []

    def stopped_on_the_third_request(client, body, timeout=30):
        if len(asked) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the digits are still being drawn
        asked.append(body)
        return real_request(client, body, timeout)

    real_request = Client.png
    monkeypatch.setattr(Client, "png", stopped_on_the_third_request)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(server, tmp_path / "set", seed=9, train=300)
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]


def test_a_server_error_stops_with_its_message_and_writes_nothing(server, tmp_path):
    with pytest.raises(SystemExit, match="404"):
        make_dataset(server, tmp_path / "set", url=server.predict_url.replace("mnist_gan", "no_such_model"))
    assert not (tmp_path / "set").exists()


def test_the_training_and_test_files_share_no_hand(server, tmp_path):
    """A classifier tested on the synthetic test split must not meet its training writers there. A hand is one
    noise vector: had one written in both files, its digit d would be the same image, byte for byte, in both."""
    make_dataset(server, tmp_path / "set", train=100)  # ten hands, and two in the test split
    train = torchvision.datasets.MNIST(tmp_path / "set", train=True)
    test = torchvision.datasets.MNIST(tmp_path / "set", train=False)
    for digit in range(10):
        seen = {image.numpy().tobytes() for image in train.data[train.targets == digit]}
        assert not any(image.numpy().tobytes() in seen for image in test.data[test.targets == digit]), digit
    seeds = {split: {body["seed"] for body in requests_for(split, 60_000, 3)} for split in ("train", "t10k")}
    assert not seeds["train"] & seeds["t10k"]  # and at full size no request seed (a set of hands) is in both
