"""Request decoding and validation, without HTTP."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

import pytest

from service import schema
from service.errors import ApiError
from service.schema import RequestDecoder
from service.settings import Settings


@pytest.fixture
def decoder() -> RequestDecoder:
    return RequestDecoder(
        dataclasses.replace(Settings(), max_products=3, max_title_chars=10, max_tags_chars=5)
    )


def field_of(decoder: RequestDecoder, body: bytes) -> str:
    with pytest.raises(ApiError) as info:
        decoder.decode(body)
    assert info.value.status == 400
    assert info.value.field is not None
    assert info.value.detail.startswith(info.value.field + ": ")
    return info.value.field


def test_decodes_titles_and_tags_in_order(decoder: RequestDecoder) -> None:
    batch = decoder.decode(b'{"products": [{"title": "a", "concatenated_tags": "x y"}, {"title": "b"}]}')
    assert batch.titles == ["a", "b"]
    assert batch.tags == ["x y", ""]
    assert batch.chars == 1 + 3 + 1


def test_null_tags_mean_no_tags(decoder: RequestDecoder) -> None:
    assert decoder.decode(b'{"products": [{"title": "a", "concatenated_tags": null}]}').tags == [""]


def test_whitespace_tags_mean_no_tags(decoder: RequestDecoder) -> None:
    # The model scores any non-empty tags string with its tags head.
    body = (
        b'{"products": [{"title": "a", "concatenated_tags": " \\t\\n "},'
        b' {"title": "b", "concatenated_tags": " x "}]}'
    )
    assert decoder.decode(body).tags == ["", " x "]


def test_limits_come_from_the_settings(decoder: RequestDecoder) -> None:
    assert decoder.decode(b'{"products": [{"title": "0123456789", "concatenated_tags": "12345"}]}')
    assert field_of(decoder, b'{"products": [{"title": "0123456789a"}]}') == "products[0].title"
    assert field_of(decoder, b'{"products": [{"title": "a", "concatenated_tags": "123456"}]}') == (
        "products[0].concatenated_tags"
    )
    assert field_of(
        decoder, b'{"products": [{"title": "a"}, {"title": "a"}, {"title": "a"}, {"title": "a"}]}'
    ) == ("products")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{}", "products"),
        (b'{"products": [{}]}', "products[0].title"),
        (b'{"products": [{"title": "a"}, {"tags": "a"}]}', "products[1].title"),
        (b'{"products": [{"title": "a"}, 2]}', "products[1]"),
        (b"[]", "body"),
        (b"{", "body"),
        (b'{"products": [{"title": "\\ud800"}]}', "products[0].title"),
        (b'{"products": [{"title": "a", "concatenated_tags": "\\udfff"}]}', "products[0].concatenated_tags"),
        (b'{"products": [{"title": " \\n "}]}', "products[0].title"),
    ],
)
def test_error_paths_name_the_field(decoder: RequestDecoder, body: bytes, field: str) -> None:
    assert field_of(decoder, body) == field


def test_valid_surrogate_pair_is_accepted(decoder: RequestDecoder) -> None:
    assert decoder.decode(b'{"products": [{"title": "\\ud83d\\ude00"}]}').titles == ["\U0001f600"]


# -- the listing fields (issue 13) ---------------------------------------------------------


def fields_of(decoder: RequestDecoder, *products: str) -> Dict[str, List[Any]]:
    return decoder.decode(('{"products": [' + ", ".join(products) + "]}").encode()).fields


def test_a_request_without_listing_fields_has_no_column_for_them(decoder: RequestDecoder) -> None:
    assert fields_of(decoder, '{"title": "a"}', '{"title": "b", "concatenated_tags": "x"}') == {}


@pytest.mark.parametrize(
    ("field", "sent", "value"),
    [
        ("seller_id", '"9835835"', "9835835"),
        ("seller_id", "9835835", "9835835"),  # an integer goes to the model as its digits
        ("seller_id", "-7", "-7"),
        ("seller_id", '"' + "s" * 64 + '"', "s" * 64),
        ("seller_id", '"vendedor \\u00e9"', "vendedor é"),
        ("seller_id", '" 9835835 "', "9835835"),  # surrounding white space is no part of an id
        ("price", "0", 0.0),
        ("price", "12.5", 12.5),
        ("price", "1000000", 1_000_000.0),
        ("price", "1e-3", 0.001),
        ("weight", "65009", 65009.0),
        ("weight", "0.0", 0.0),
        ("minimum_quantity", "3000", 3000.0),
        ("minimum_quantity", "1", 1.0),
        ("express_delivery", "true", True),
        ("express_delivery", "false", False),
        ("express_delivery", "1", 1.0),
        ("express_delivery", "0", 0.0),
        ("express_delivery", "1.0", 1.0),
        ("express_delivery", "0.0", 0.0),
    ],
)
def test_each_listing_field_is_taken_in_each_allowed_form(
    decoder: RequestDecoder, field: str, sent: str, value: Any
) -> None:
    # The second of three products sends it: the others' rows are unknown.
    fields = fields_of(decoder, '{"title": "a"}', f'{{"title": "b", "{field}": {sent}}}', '{"title": "c"}')
    unknown = "" if field == "seller_id" else None
    assert fields == {field: [unknown, value, unknown]}
    assert type(fields[field][1]) is type(value)  # true stays a bool: the runtime reads it as 1


@pytest.mark.parametrize("field", ["seller_id", "price", "weight", "minimum_quantity", "express_delivery"])
def test_null_is_the_same_as_absent(decoder: RequestDecoder, field: str) -> None:
    assert fields_of(decoder, f'{{"title": "a", "{field}": null}}', '{"title": "b"}') == {}


def test_an_empty_seller_is_unknown(decoder: RequestDecoder) -> None:
    # Sent as the model's own "unknown": a column of "" is what an absent seller gets too.
    assert fields_of(decoder, '{"title": "a", "seller_id": ""}') == {"seller_id": [""]}
    assert fields_of(decoder, '{"title": "a", "seller_id": "  "}') == {"seller_id": [""]}


def test_every_field_of_a_listing_together(decoder: RequestDecoder) -> None:
    product = (
        '{"title": "a", "seller_id": 12, "price": 9.9, "weight": 300, "minimum_quantity": 5,'
        ' "express_delivery": true}'
    )
    assert fields_of(decoder, product, '{"title": "b", "weight": 2}') == {
        "seller_id": ["12", ""],
        "price": [9.9, None],
        "weight": [300.0, 2.0],
        "minimum_quantity": [5.0, None],
        "express_delivery": [True, None],
    }


@pytest.mark.parametrize(
    ("field", "sent"),
    [
        ("seller_id", "true"),  # a bool is not an integer here
        ("seller_id", "1.5"),
        ("seller_id", "98.0"),
        ("seller_id", "[1]"),
        ("seller_id", '"' + "s" * 65 + '"'),
        ("seller_id", "9223372036854775808"),  # past int64: send it as a string
        ("seller_id", '"\\ud800"'),
        ("price", "-0.01"),
        ("price", "1000000.5"),
        ("price", "1e999"),  # not JSON's NaN or Infinity, but out of every range
        ("price", "true"),
        ("price", '"12"'),
        ("weight", "-1"),
        ("weight", "false"),
        ("weight", "{}"),
        ("minimum_quantity", "1000001"),
        ("minimum_quantity", "true"),
        ("express_delivery", "2"),
        ("express_delivery", "0.5"),
        ("express_delivery", "-1"),
        ("express_delivery", '"true"'),
        ("express_delivery", "[]"),
    ],
)
def test_an_invalid_listing_field_names_itself_and_what_it_takes(
    decoder: RequestDecoder, field: str, sent: str
) -> None:
    body = f'{{"products": [{{"title": "a"}}, {{"title": "b", "{field}": {sent}}}]}}'.encode()
    with pytest.raises(ApiError) as info:
        decoder.decode(body)
    assert info.value.status == 400
    assert info.value.field == f"products[1].{field}"
    if "ud800" not in sent:
        assert info.value.detail.startswith(f"products[1].{field}: expected ")
        assert "or null" in info.value.detail


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"title": "a", "price": -1}', "products[0].price: expected a number from 0 to 1000000, or null"),
        (
            b'{"title": "a", "price": true}',
            "products[0].price: expected a number from 0 to 1000000, or null, got `bool`",
        ),
        (
            b'{"title": "a", "express_delivery": 2}',
            "products[0].express_delivery: expected true, false, 0, 1 (or 0.0, 1.0), or null",
        ),
    ],
)
def test_the_message_says_what_is_allowed(decoder: RequestDecoder, body: bytes, detail: str) -> None:
    with pytest.raises(ApiError) as info:
        decoder.decode(b'{"products": [' + body + b"]}")
    assert info.value.detail == detail


def test_listing_limits_come_from_the_settings() -> None:
    settings = dataclasses.replace(
        Settings(), max_seller_id_chars=3, max_price=10, max_weight=20.5, max_minimum_quantity=2
    )
    decoder = RequestDecoder(settings)
    accepted = '{"title": "a", "seller_id": 999, "price": 10, "weight": 20.5, "minimum_quantity": 2}'
    assert fields_of(decoder, accepted, '{"title": "b", "seller_id": "abc"}')["seller_id"] == ["999", "abc"]
    assert fields_of(decoder, '{"title": "a", "seller_id": -99}') == {"seller_id": ["-99"]}
    for product, field in [
        ('{"title": "a", "seller_id": "abcd"}', "seller_id"),
        ('{"title": "a", "seller_id": 1000}', "seller_id"),
        ('{"title": "a", "seller_id": -100}', "seller_id"),  # four characters with the sign
        ('{"title": "a", "price": 10.01}', "price"),
        ('{"title": "a", "weight": 21}', "weight"),
        ('{"title": "a", "minimum_quantity": 3}', "minimum_quantity"),
    ]:
        assert field_of(decoder, f'{{"products": [{product}]}}'.encode()) == f"products[0].{field}"
    with pytest.raises(ApiError) as info:
        decoder.decode(b'{"products": [{"title": "a", "weight": 21}]}')
    assert info.value.detail == "products[0].weight: expected a number from 0 to 20.5, or null"


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        (b'{"a": "plain ascii"}', True),
        ('{"a": "Caneca bebê 😀"}'.encode(), True),
        # A character cut by a slice's edge is whole again in the next slice.
        (b" " * (schema._UTF8_SLICE_BYTES - 1) + "é😀".encode() * 3, True),
        (b" " * schema._UTF8_SLICE_BYTES * 2 + b"\xff", False),
        (b" " * (schema._UTF8_SLICE_BYTES - 1) + "é".encode()[:1], False),  # cut short at the end
        (b"\xed\xa0\x80", False),  # a surrogate encoded as UTF-8 (CESU-8) is not UTF-8
    ],
)
def test_utf8_is_checked_slice_by_slice(body: bytes, valid: bool) -> None:
    assert schema._is_utf8(body) == valid
    assert schema._is_utf8(bytearray(body)) == valid
