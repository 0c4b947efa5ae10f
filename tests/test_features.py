"""The feature spec's Python realisation: folding, words, n-grams, serialisation."""

from __future__ import annotations

import json

import pytest

from categorizer.features import Doc, FeatureSpec, default_fold_table, name

SPEC = FeatureSpec()


def named(spec: FeatureSpec, grams: list[str]) -> list[str]:
    """Names of n-grams straight from the definition: sum of code * base**k, mod 2**28."""
    return [name(sum(ord(ch) * spec.power(k) for k, ch in enumerate(gram)) % 2**28) for gram in grams]


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
    assert SPEC.words(text) == words


def test_stream_frames_words_with_single_spaces() -> None:
    assert SPEC.stream(["ab", "c"]) == " ab c "
    assert SPEC.stream([]) == " "


def analyze(spec: FeatureSpec, doc: Doc) -> list[str]:
    return spec.analyze_chars(doc) + spec.analyze_words(doc)


def test_analyzers_join_title_and_tags_and_mark_word_ngrams() -> None:
    spec = FeatureSpec(char_ngrams=(2, 2), word_ngrams=(1, 2))
    chars = [" a", "ab", "b ", " c", "c "]
    words = ["\x01ab", "\x01c", "\x01ab c"]
    # Bags: order is free.
    assert sorted(spec.analyze_chars(("Ab", "c"))) == sorted(named(spec, chars))
    assert sorted(spec.analyze_words(("Ab", "c"))) == sorted(named(spec, words))


def test_skip_bigrams_pair_words_one_apart_under_their_own_mark() -> None:
    doc = ("kit chá bebê azul", "")
    plain = FeatureSpec(word_ngrams=(1, 1), skip_bigrams=False)
    words = named(plain, ["\x01kit", "\x01cha", "\x01bebe", "\x01azul"])
    skips = named(plain, ["\x02kit bebe", "\x02cha azul"])
    assert sorted(FeatureSpec(word_ngrams=(1, 1)).analyze_words(doc)) == sorted([*words, *skips])
    assert plain.analyze_words(doc) == words


def test_names_are_four_ascii_characters_of_seven_bits() -> None:
    # HashingVectorizer hashes a name's UTF-8 bytes; the graph hashes the same four
    # bytes as an int32, so every byte must be ASCII.
    assert name(0) == "\x00" * 4
    assert name(2**28 - 1) == "\x7f" * 4
    assert name(1 + (2 << 7) + (3 << 14) + (4 << 21)).encode() == bytes([1, 2, 3, 4])


def test_characters_beyond_the_bmp_share_one_code() -> None:
    assert analyze(SPEC, ("😀 caneca", "")) == analyze(SPEC, ("🎉 caneca", ""))
    assert analyze(SPEC, ("中 caneca", "")) != analyze(SPEC, ("文 caneca", ""))


def test_analyzers_are_empty_for_text_without_words() -> None:
    assert analyze(SPEC, ("...", "")) == []


def test_word_ngrams_use_words_cut_to_max_word_chars() -> None:
    spec = FeatureSpec(char_ngrams=(2, 2), word_ngrams=(1, 2), max_word_chars=4)
    words = spec.analyze_words(("abcdefg xyz", ""))
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
    spec = FeatureSpec(n_features=2**10, char_ngrams=(3, 4))
    assert FeatureSpec.from_json(spec.to_json()) == spec


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
    ],
)
def test_spec_rejects_values_the_graph_cannot_realise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))[:4]):
        FeatureSpec(**kwargs)  # type: ignore[arg-type]


def test_ngrams_are_the_text_of_what_the_analyzers_fingerprint() -> None:
    doc = ("Kit Chá de Bebê", "lembrancinha")
    grams = SPEC.ngrams(doc)
    assert grams["words"][:3] == ["kit", "kit cha", "cha"]
    assert grams["skip bigrams"][0] == "kit _ de"
    assert grams["characters"][:2] == [" k", " ki"]
    assert named(SPEC, grams["characters"]) == SPEC.analyze_chars(doc)
    marked = ["\x01" + g for g in grams["words"]] + [
        "\x02" + g.replace(" _ ", " ") for g in grams["skip bigrams"]
    ]
    assert named(SPEC, marked) == SPEC.analyze_words(doc)


def test_ngrams_cut_words_and_drop_skip_bigrams_as_the_spec_says() -> None:
    spec = FeatureSpec(char_ngrams=(3, 3), word_ngrams=(1, 1), skip_bigrams=False, max_word_chars=3)
    assert spec.ngrams(("abcd e", "")) == {
        "characters": [" ab", "abc", "bcd", "cd ", "d e", " e "],
        "words": ["abc", "e"],
    }
