"""Request decoding and validation, without HTTP."""

from __future__ import annotations

import dataclasses

import pytest

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
