"""docs/openapi.yaml, the API's one description, against the contract that implements it
(handler/request_contract.py) and the server's config. Schemathesis fuzzes the real server with it in
tests/test_server.py."""
import re

import pytest
import schemathesis
import yaml

from handler import request_contract as contract
from scripts import ROOT, read_properties

DOCUMENT = ROOT / "docs" / "openapi.yaml"


@pytest.fixture(scope="module")
def document() -> dict:
    return yaml.safe_load(DOCUMENT.read_text())


def test_the_document_is_openapi_3_1_that_schemathesis_loads(document):
    assert document["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_path(str(DOCUMENT))
    assert [result.ok().label for result in schema.get_all_operations()] == ["POST /predictions/mnist_gan"]


def test_the_fields_limits_are_the_contracts(document):
    schemas = document["components"]["schemas"]
    fields = schemas["Request"]["properties"]
    assert (fields["count"]["minimum"], fields["count"]["maximum"]) == (1, contract.MAX_COUNT)
    assert (fields["seed"]["minimum"], fields["seed"]["maximum"]) == (0, contract.MAX_SEED)
    assert (fields["digit"]["minimum"], fields["digit"]["maximum"]) == (0, 9)
    assert (fields["digits"]["minLength"], fields["digits"]["maxLength"]) == (1, contract.MAX_COUNT)
    assert re.fullmatch(fields["digits"]["pattern"], "0123456789") and not re.search(fields["digits"]["pattern"], "1\u0663")
    assert set(fields) == {"count", "seed", "digit", "digits", "hand"} and schemas["Request"]["additionalProperties"] is False
    hand = schemas["Hand"]["properties"]
    assert (hand["digit"]["minimum"], hand["digit"]["maximum"]) == (0, 9) and set(schemas["Hand"]["required"]) == {"image", "digit"}
    image = schemas["Image"]
    assert image["minItems"] == image["maxItems"] == contract.HAND_SIDE
    assert image["items"]["minItems"] == image["items"]["maxItems"] == contract.HAND_SIDE
    assert schemas["InkedImage"]["allOf"][1]["contains"]["contains"]["minimum"] == contract.INK_LEVEL
    png = hand["image"]["oneOf"][1]["description"]
    assert f"at most {contract.MAX_PNG_SIDE} pixels a side" in png and f"{contract.INK_LEVEL} ink" in png
    assert f"{contract.MNIST_BOX} px" in png


def test_count_times_the_length_of_digits_is_bounded_exactly_as_the_contract_bounds_it(document):
    ladder = [clause for clause in document["components"]["schemas"]["Request"]["allOf"] if "if" in clause
              and "count" in clause["if"].get("properties", {})]

    def longest(count: int) -> int:  # the tightest maxLength of the clauses that apply to this count
        return min([contract.MAX_COUNT] + [c["then"]["properties"]["digits"]["maxLength"] for c in ladder
                                           if count >= c["if"]["properties"]["count"]["minimum"]])

    assert [longest(count) for count in range(1, contract.MAX_COUNT + 1)] == \
        [contract.MAX_COUNT // count for count in range(1, contract.MAX_COUNT + 1)]


def test_the_answers_and_the_413_are_the_contracts_and_the_configs(document):
    responses = document["paths"]["/predictions/mnist_gan"]["post"]["responses"]
    assert set(responses["200"]["content"]) == set(contract.ANSWER_TYPES)
    statuses = {contract.BadRequest.status, contract.NotAcceptable.status}
    assert statuses <= {int(code) for code in responses}
    assert set(document["components"]["schemas"]["Error"]["properties"]["code"]["enum"]) == statuses | {413}
    limit = int(read_properties()["max_request_size"])
    assert f"max_request_size, {limit} bytes" in responses["413"]["description"] and limit == 1 << 20
    assert document["security"] == [{"inferenceKey": []}]
    assert document["components"]["securitySchemes"]["inferenceKey"] == {**document["components"]["securitySchemes"]
                                                                         ["inferenceKey"], "type": "http", "scheme": "bearer"}
