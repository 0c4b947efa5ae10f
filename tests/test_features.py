"""The feature spec and its Python realisation (sklearn_twin): words, n-grams, buckets, json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer

from categorizer import sklearn_twin as twin
from categorizer.features import Doc, FeatureSpec, default_fold_table

SPEC = FeatureSpec()


def named(spec: FeatureSpec, grams: list[str]) -> list[int]:
    """Fingerprints of n-grams straight from the definition: sum of code * base**k, mod 2**28."""
    return [sum(ord(ch) * spec.power(k) for k, ch in enumerate(gram)) % 2**28 for gram in grams]


def chars_of(spec: FeatureSpec, doc: Doc) -> list[int]:
    return twin.char_fingerprints(spec, twin.stream(spec, doc))


def words_of(spec: FeatureSpec, doc: Doc) -> list[int]:
    """The word block's fingerprints: word n-grams, then skip bigrams."""
    return twin.block_fingerprints(spec, doc)[1]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Bebê", ["bebe"]),
        ("ÇÃO Éter", ["cao", "eter"]),
        ("Kit-Festa, 10 un.", ["kit", "festa", "10", "un"]),
        ("chá  de\tbebê\n", ["cha", "de", "bebe"]),
        ("e\u0301 combinado", ["e", "combinado"]),  # NFD accent: the mark is deleted
        ("“aspas” – travessão…", ["aspas", "travessao"]),
        ("", []),
        ("!!! ???", []),
        ("😀 中文", ["😀", "中文"]),  # outside the fold table: kept as they are
    ],
)
def test_words_fold_case_accents_and_punctuation(text: str, words: list[str]) -> None:
    assert twin.words(SPEC, text) == words


def test_stream_frames_words_with_single_spaces() -> None:
    assert twin.stream_text(["ab", "c"]) == " ab c "
    assert twin.stream_text([]) == " "
    assert twin.stream(SPEC, ("Ab!", "c")) == [ord(ch) for ch in " ab c "]


def analyze(spec: FeatureSpec, doc: Doc) -> list[int]:
    return chars_of(spec, doc) + words_of(spec, doc)


def test_stages_join_title_and_tags_and_mark_word_ngrams() -> None:
    spec = FeatureSpec(char_ngrams=(2, 2), word_ngrams=(1, 2))
    chars = [" a", "ab", "b ", " c", "c "]
    words = ["\x01ab", "\x01c", "\x01ab c"]
    # Bags: order is free.
    assert sorted(chars_of(spec, ("Ab", "c"))) == sorted(named(spec, chars))
    assert sorted(words_of(spec, ("Ab", "c"))) == sorted(named(spec, words))


def test_skip_bigrams_pair_words_one_apart_under_their_own_mark() -> None:
    doc = ("kit chá bebê azul", "")
    plain = FeatureSpec(word_ngrams=(1, 1), skip_bigrams=False)
    words = named(plain, ["\x01kit", "\x01cha", "\x01bebe", "\x01azul"])
    skips = named(plain, ["\x02kit bebe", "\x02cha azul"])
    assert sorted(words_of(FeatureSpec(word_ngrams=(1, 1)), doc)) == sorted([*words, *skips])
    assert words_of(plain, doc) == words


def name(fingerprint: int) -> str:
    """A fingerprint's name: four 7-bit ASCII characters, little end first."""
    return "".join(chr((fingerprint >> shift) & 0x7F) for shift in (0, 7, 14, 21))


def test_buckets_are_where_hashing_vectorizer_puts_the_fingerprints_names() -> None:
    # The spec's buckets were first those of HashingVectorizer over each n-gram's name;
    # a model trained then must keep scoring the same.
    spec = FeatureSpec(n_features=2**10)
    fps = np.array([0, 1, 12345, 2**28 - 1, 0x5555555, 2**27 + 7])
    vectorizer = HashingVectorizer(
        analyzer=lambda fp: [name(fp)], n_features=2**9, alternate_sign=False, norm=None
    )
    expected = vectorizer.transform(fps.tolist()).indices.tolist()
    assert twin.buckets(spec, fps).tolist() == expected
    assert name(2**28 - 1) == "\x7f" * 4
    assert name(1 + (2 << 7) + (3 << 14) + (4 << 21)).encode() == bytes([1, 2, 3, 4])


def test_buckets_spread_the_fingerprints_of_real_ngrams_evenly() -> None:
    # A multiplicative hash of a polynomial hash: short n-grams of similar text
    # must not crowd a few buckets, or collisions would cost accuracy.
    spec = FeatureSpec(n_features=2**12)
    titles = [f"kit {n} lembrancinha cha de bebe menino {n * 7} azul" for n in range(400)]
    fps = sorted({fp for title in titles for fp in analyze(spec, (title, ""))})
    loads = np.bincount(twin.buckets(spec, np.array(fps)), minlength=spec.block_width)
    mean = len(fps) / spec.block_width
    assert loads.max() <= mean + 6 * mean**0.5 + 3


def test_characters_beyond_the_bmp_share_one_code() -> None:
    assert analyze(SPEC, ("😀 caneca", "")) == analyze(SPEC, ("🎉 caneca", ""))
    assert analyze(SPEC, ("中 caneca", "")) != analyze(SPEC, ("文 caneca", ""))


def test_fingerprints_are_empty_for_text_without_words() -> None:
    assert analyze(SPEC, ("...", "")) == []


def test_word_ngrams_use_words_cut_to_max_word_chars() -> None:
    spec = FeatureSpec(char_ngrams=(2, 2), word_ngrams=(1, 2), max_word_chars=4)
    words = words_of(spec, ("abcdefg xyz", ""))
    assert sorted(words) == sorted(named(spec, ["\x01abcd", "\x01xyz", "\x01abcd xyz"]))


def test_fold_table_maps_single_characters() -> None:
    table = default_fold_table()
    assert table["Ê"] == "e"
    assert table["ç"] == "c"
    assert table["\u0301"] == ""
    assert table["-"] == " "
    assert "a" not in table  # unchanged characters are not listed
    assert all(len(k) == 1 and len(v) <= 1 for k, v in table.items())


def test_spec_round_trips_through_json() -> None:
    spec = FeatureSpec(n_features=2**10, char_ngrams=(3, 4), seller_value=4.0)
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_a_version_3_spec_is_refused() -> None:
    # Version 3 files have no field block: read as version 4 they would lack inputs.
    raw = json.loads(SPEC.to_json())
    raw["format_version"] = 3
    with pytest.raises(ValueError, match="format_version 3 is not supported"):
        FeatureSpec.from_json(json.dumps(raw))


def test_default_number_edges_are_float32_and_log_spaced() -> None:
    edges = np.array(SPEC.number_edges["price"], dtype=np.float64)
    assert np.array_equal(edges.astype(np.float32), edges)
    np.testing.assert_allclose(edges[1:] / edges[:-1], 2**0.5, rtol=1e-6)
    assert SPEC.number_edges["express_delivery"] == (0.5,)
    assert SPEC.number_tokens["express_delivery"] == 3  # unknown, no, yes


def test_specs_written_before_format_versions_are_refused() -> None:
    # Such a file holds a one-block model; its fields alone would pass for ours.
    raw = json.loads(SPEC.to_json())
    del raw["format_version"]
    with pytest.raises(ValueError, match="format_version 1 is not supported"):
        FeatureSpec.from_json(json.dumps(raw))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_features": 1000},
        {"n_features": 1},  # two blocks need two buckets
        {"max_word_chars": 0},
        {"fingerprint_base": 2},
        {"fingerprint_base": 2**28 + 1},
        {"char_ngrams": (3, 2)},
        {"word_ngrams": (0, 1)},
        {"fold": {"ab": "c"}},
        {"fold": {"q": "😀"}},  # the graph's character table holds the BMP only
        {"fold": {"😀": " "}},
        {"char_ngrams": (1, 65)},
        {"format_version": 1},
        {"seller_value": 3.0},  # not a power of two: its table would not read back exactly
        {"number_value": 0.0},
        {"number_edges": {"price": (1.0,)}},
        {"number_edges": {**SPEC.number_edges, "price": (2.0, 1.0)}},
        {"number_edges": {**SPEC.number_edges, "price": (0.1,)}},  # not a float32 value
        {"number_edges": {**SPEC.number_edges, "price": ()}},
    ],
)
def test_spec_rejects_values_the_graph_cannot_realise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))[:4]):
        FeatureSpec(**kwargs)  # type: ignore[arg-type]


def test_ngrams_are_the_text_of_what_the_stages_fingerprint() -> None:
    doc = ("Kit Chá de Bebê", "lembrancinha")
    grams = twin.ngrams(SPEC, doc)
    assert grams["words"][:3] == ["kit", "kit cha", "cha"]
    assert grams["skip bigrams"][0] == "kit _ de"
    assert grams["characters"][:2] == [" k", " ki"]
    assert named(SPEC, grams["characters"]) == chars_of(SPEC, doc)
    marked = ["\x01" + g for g in grams["words"]] + [
        "\x02" + g.replace(" _ ", " ") for g in grams["skip bigrams"]
    ]
    assert named(SPEC, marked) == words_of(SPEC, doc)


def test_ngrams_cut_words_and_drop_skip_bigrams_as_the_spec_says() -> None:
    spec = FeatureSpec(char_ngrams=(3, 3), word_ngrams=(1, 1), skip_bigrams=False, max_word_chars=3)
    assert twin.ngrams(spec, ("abcd e", "")) == {
        "characters": [" ab", "abc", "bcd", "cd ", "d e", " e "],
        "words": ["abc", "e"],
    }
