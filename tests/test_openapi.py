"""docs/openapi.yaml, the API's one description, against the contract that implements it
(handler/request_contract.py) and the server's config. Schemathesis fuzzes the real server with it in
tests/test_server.py."""
import re

import pytest
import schemathesis
import yaml

from handler import request_contract as contract
from handler import upload
from scripts import MODEL_NAME, ROOT, hand_route, read_properties
from train.config import TrainConfig

DOCUMENT = ROOT / "docs" / "openapi.yaml"


@pytest.fixture(scope="module")
def document() -> dict:
    return yaml.safe_load(DOCUMENT.read_text())


def test_the_document_is_openapi_3_1_that_schemathesis_loads(document):
    assert document["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_path(str(DOCUMENT))
    assert [result.ok().label for result in schema.get_all_operations()] == [
        f"POST /predictions/{MODEL_NAME}", f"POST /predictions/{hand_route()}"]


def test_the_fields_limits_are_the_contracts(document):
    schemas = document["components"]["schemas"]
    fields = schemas["Request"]["properties"]
    last_digit = TrainConfig().num_classes - 1  # the served model's classes, which the contract checks against
    assert (fields["count"]["minimum"], fields["count"]["maximum"]) == (1, contract.MAX_COUNT)
    assert (fields["seed"]["minimum"], fields["seed"]["maximum"]) == (0, contract.MAX_SEED)
    assert (fields["digits"]["minLength"], fields["digits"]["maxLength"]) == (1, contract.MAX_COUNT)
    assert re.fullmatch(fields["digits"]["pattern"], "0123456789") and not re.search(fields["digits"]["pattern"], "1\u0663")
    assert set(fields) == {"count", "seed", "digit", "digits"} and schemas["Request"]["additionalProperties"] is False
    hand_request, hand = schemas["HandRequest"]["properties"], schemas["Hand"]["properties"]
    assert set(hand_request) == {"hand", "digit", "digits", "count"} and hand_request["count"]["const"] == 1
    for digit in (fields["digit"], hand_request["digit"], hand["digit"]):
        assert (digit["minimum"], digit["maximum"]) == (0, last_digit)
    assert set(hand) == {"image", "digit", "digits"} and schemas["Hand"]["required"] == ["image"]
    assert (hand["digits"]["minLength"], hand["digits"]["maxLength"]) == (1, contract.MAX_HAND_DIGITS)
    assert hand["image"]["oneOf"][1]["maxItems"] == contract.MAX_HAND_DIGITS
    image = schemas["Image"]
    assert image["minItems"] == image["maxItems"] == contract.HAND_SIDE
    assert image["items"]["minItems"] == image["items"]["maxItems"] == contract.HAND_SIDE
    assert schemas["InkedImage"]["allOf"][1]["contains"]["contains"]["minimum"] == contract.INK_LEVEL
    encoded = hand["image"]["oneOf"][2]
    assert encoded["format"] == "base64-image"  # not `byte`: data: URLs and line breaks are taken too
    text = " ".join(encoded["description"].split())
    assert f"At most {upload.MAX_SIDE} pixels a side and {upload.MAX_AREA / 1e6:.1f} megapixels" in text
    assert f"{contract.INK_LEVEL} ink" in text and f"{upload.MNIST_BOX} px" in text and "data:image/jpeg;base64" in text
    assert "format: byte" not in DOCUMENT.read_text()


def test_count_times_the_length_of_digits_is_bounded_exactly_as_the_contract_bounds_it(document):
    ladder = [clause for clause in document["components"]["schemas"]["Request"]["allOf"] if "if" in clause
              and "count" in clause["if"].get("properties", {})]

    def longest(count: int) -> int:  # the tightest maxLength of the clauses that apply to this count
        return min([contract.MAX_COUNT] + [c["then"]["properties"]["digits"]["maxLength"] for c in ladder
                                           if count >= c["if"]["properties"]["count"]["minimum"]])

    assert [longest(count) for count in range(1, contract.MAX_COUNT + 1)] == \
        [contract.MAX_COUNT // count for count in range(1, contract.MAX_COUNT + 1)]


def test_the_answers_and_the_413_are_the_contracts_and_the_configs(document):
    routes = document["paths"]
    for route in routes.values():
        responses = route["post"]["responses"]
        assert set(responses["200"]["content"]) == set(contract.ANSWER_TYPES)
        assert {contract.BadRequest.status, contract.NotAcceptable.status, 413, 503} <= {int(code) for code in responses}
    shared = document["components"]["responses"]
    limit = int(read_properties()["max_request_size"])
    assert f"max_request_size, {limit} bytes" in shared["TooLarge"]["description"] and limit == 1 << 20
    assert "content" not in shared["TooLarge"]  # TorchServe's own 413 has no body
    limited = routes[f"/predictions/{hand_route()}"]["post"]["responses"]["429"]
    assert "Retry-After" in limited["headers"] and "429" not in routes[f"/predictions/{MODEL_NAME}"]["post"]["responses"]
    statuses = {contract.BadRequest.status, contract.NotAcceptable.status, 413, 429}
    assert set(document["components"]["schemas"]["Error"]["properties"]["code"]["enum"]) == statuses
    assert document["security"] == [{"inferenceKey": []}]
    assert document["components"]["securitySchemes"]["inferenceKey"] == {**document["components"]["securitySchemes"]
                                                                         ["inferenceKey"], "type": "http", "scheme": "bearer"}
