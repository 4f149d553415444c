"""make bench's hand sections against the session's real TorchServe: a request that fails ends the benchmark (a
failure is not a slow answer), and hands beside plain requests are measured on uploads each sent once."""
import pytest
import torch

from cases import STROKE, hand_body
from experiments.bench import hand, isolation
from scripts import MODEL_NAME, hand_route
from train.data import load_mnist

pytestmark = pytest.mark.integration
PLAIN, HANDS = f"/predictions/{MODEL_NAME}", f"/predictions/{hand_route()}"


@pytest.fixture(scope="module")
def digits(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    return load_mnist(data_dir, train=False, limit=200)


def test_a_failed_request_fails_the_hand_section(server, digits):
    photos = hand.number_photos(*digits, count=3)
    assert len(hand.sequential(server, HANDS, photos[:2])) == 2  # real photos of numbers, answered
    with pytest.raises(SystemExit, match=r"1 request\(s\) failed, e.g. \['400: "):
        hand.sequential(server, HANDS, [photos[2], hand_body(STROKE, count=2)])
    with pytest.raises(SystemExit, match="request"):  # in the clients' threads too, where an assert went unseen
        hand.images_per_second(server, HANDS, [hand_body(STROKE, digits="1"), b'{"hand": 3}'], 2, 5.0)


def test_hands_beside_plain_requests_send_each_upload_once_and_fail_on_a_failure(server, digits):
    uploads = isolation.digit_uploads(*digits)
    results = isolation.measure(server.ports[0], PLAIN, HANDS, server.headers(), uploads, seconds=1.0,
                                hand_clients=(0, 2))
    assert results[0]["hands_per_s"] == 0 and results[2]["hands_per_s"] > 0 and results[2]["p50"] > 0
    assert sum(r["uploads"] for r in results.values()) <= len(uploads)
    assert "| 2 |" in isolation.report(results)
    with pytest.raises(SystemExit, match=r"2 hand clients: \d+ request\(s\) failed"):
        isolation.measure(server.ports[0], PLAIN, HANDS, server.headers(), [b'{"hand": 3}'] * 500, seconds=1.0,
                          hand_clients=(2,))
