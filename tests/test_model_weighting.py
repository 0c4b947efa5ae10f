"""The scikit-learn side the graph reproduces: two blocks, an occurrence l2 norm per block."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.linear_model import SGDClassifier

from categorizer import model as model_module
from categorizer.features import FeatureSpec
from categorizer.heads import (
    FIELD_HEADS,
    TAGS_FIELDS_HEAD,
    TAGS_HEAD,
    TEXT_HEADS,
    TITLE_FIELDS_HEAD,
    TITLE_HEAD,
    WITH_FIELDS,
)
from categorizer.model import TrainConfig, fit
from categorizer.prepare import Examples, clean, seller_ids, training_examples
from categorizer.sklearn_twin import FieldTokens, NgramCounts, OccurrenceTfidf, head_choice
from categorizer.weights import COEF_BITS


def fitted(idf: list[float], block_width: int) -> OccurrenceTfidf:
    tfidf = OccurrenceTfidf(block_width)
    tfidf.idf_ = np.array(idf)
    return tfidf


def test_each_block_is_divided_by_its_own_occurrence_norm() -> None:
    tfidf = fitted([1.0, 2.0, 3.0, 4.0], block_width=2)
    counts = sp.csr_matrix([[2.0, 1.0, 0.0, 3.0]])
    char_norm = np.sqrt(2 * 1.0**2 + 1 * 2.0**2)  # per occurrence, not per distinct bucket
    word_norm = np.sqrt(3 * 4.0**2)
    expected = [[2 * 1.0 / char_norm, 1 * 2.0 / char_norm, 0.0, 3 * 4.0 / word_norm]]
    np.testing.assert_allclose(tfidf.transform(counts).toarray(), expected, rtol=1e-15)


def test_an_empty_block_stays_zero() -> None:
    tfidf = fitted([1.0, 2.0, 3.0, 4.0], block_width=2)
    counts = sp.csr_matrix([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0] * 4])
    expected = [[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0] * 4]
    np.testing.assert_allclose(tfidf.transform(counts).toarray(), expected)


def test_a_matrix_of_another_width_is_refused() -> None:
    with pytest.raises(ValueError, match="2 blocks of 2 columns"):
        fitted([1.0, 2.0, 3.0], block_width=2).transform(sp.csr_matrix([[1.0, 0.0, 0.0]]))


def test_counts_put_characters_then_words() -> None:
    spec = FeatureSpec(n_features=2**10, char_ngrams=(2, 3), word_ngrams=(1, 2))
    doc = ("kit chá de bebê", "menino")
    counts = NgramCounts(spec).transform([("", ""), doc, doc])
    width = spec.block_width
    assert counts.shape == (3, spec.n_features)
    assert counts[0].sum() == 0
    assert counts[1, :width].sum() == 45  # 23 bigrams, 22 trigrams
    assert counts[1, width:].sum() == 12  # 5 words, 4 pairs, 3 skips
    assert (counts[1] != counts[2]).nnz == 0


def test_without_repeats_a_block_has_unit_l2_norm() -> None:
    rng = np.random.default_rng(0)
    tfidf = fitted(list(rng.uniform(1.0, 9.0, 8)), block_width=4)
    counts = sp.csr_matrix((rng.uniform(size=(5, 8)) < 0.5).astype(float))
    weighted = tfidf.transform(counts).toarray()
    for block in (weighted[:, :4], weighted[:, 4:]):
        norms = np.linalg.norm(block, axis=1)
        np.testing.assert_allclose(norms[norms > 0], 1.0)


def listing_rows() -> pd.DataFrame:
    """Three searches: one product shown twice, one without tags."""
    return clean(
        pd.DataFrame(
            {
                "title": ["Caneca", "Caneca", "Body"],
                "concatenated_tags": ["azul", "azul", ""],
                "query": ["caneca", "xicara", "caneca"],
                "category": ["Decoração", "Decoração", "Bebê"],
                "seller_id": [7, 7, 9],
                "price": [10.5, 10.5, 30.0],
                "weight": [200.0, 200.0, None],
                "minimum_quantity": [1, 1, 2],
                "express_delivery": [1, 1, 0],
            }
        )
    )


def test_training_examples_are_both_views_then_weighted_queries() -> None:
    examples = training_examples(listing_rows(), query_weight=0.5)
    batch, target, weights = examples.docs, examples.target, examples.weights
    # A product shown by two searches is one example per view.
    assert batch[:4] == [("Caneca", ""), ("Body", ""), ("Caneca", "azul"), ("Body", "")]
    assert target[:4].tolist() == ["Decoração", "Bebê", "Decoração", "Bebê"]
    queries = sorted(zip(batch[4:], target[4:], weights[4:]))
    assert queries == [
        (("caneca", ""), "Bebê", 0.25),
        (("caneca", ""), "Decoração", 0.25),
        (("xicara", ""), "Decoração", 0.5),
    ]
    assert weights[:4].tolist() == [1.0] * 4
    # Without fields_weight no example carries a field.
    assert examples.fields.sellers == ("",) * 7
    assert np.isnan(examples.fields.numbers).all()


def test_the_views_come_again_with_their_fields_before_the_tags_alone() -> None:
    plain = training_examples(listing_rows(), query_weight=0.5)
    examples = training_examples(listing_rows(), query_weight=0.5, tags_only_weight=0.7, fields_weight=0.8)
    assert examples.docs == [*plain.docs, *plain.docs[:4], ("", "azul")]
    assert examples.weights.tolist() == [*plain.weights.tolist(), 0.8, 0.8, 0.8, 0.8, 0.7]
    assert examples.target[7:11].tolist() == plain.target[:4].tolist()
    assert examples.fields.sellers == ("",) * 7 + ("7", "9", "7", "9") + ("",)
    assert examples.field_view.tolist() == [False] * 7 + [True] * 4 + [False]
    np.testing.assert_array_equal(
        examples.fields.numbers[7:9], np.array([[10.5, 200.0, 1, 1], [30.0, np.nan, 2, 0]], dtype=np.float32)
    )
    assert np.isnan(examples.fields.numbers[[*range(7), 11]]).all()


def test_field_dropout_leaves_fields_unknown_at_its_rate_reproducibly() -> None:
    rows = pd.concat([listing_rows()] * 500, ignore_index=True)
    rows["title"] = [f"produto {i}" for i in range(len(rows))]  # distinct products
    examples = training_examples(rows, query_weight=0.5, fields_weight=1.0, field_dropout=0.25)
    views = examples.field_view
    unknown = np.isnan(examples.fields.numbers[views][:, [0, 2, 3]])  # price, quantity, express: always sent
    assert 0.2 < unknown.mean() < 0.3
    sellers = np.array(examples.fields.sellers, dtype=object)[views]
    assert 0.2 < (sellers == "").mean() < 0.3
    again = training_examples(rows, query_weight=0.5, fields_weight=1.0, field_dropout=0.25)
    assert again.fields.sellers == examples.fields.sellers
    np.testing.assert_array_equal(again.fields.numbers, examples.fields.numbers)


def test_the_tags_head_also_learns_from_tags_alone() -> None:
    without = training_examples(listing_rows(), query_weight=0.5)
    examples = training_examples(listing_rows(), query_weight=0.5, tags_only_weight=0.7)
    # Only the product with tags adds a tags-only example, last, at the given weight.
    assert examples.docs == [*without.docs, ("", "azul")]
    assert examples.target.tolist() == [*without.target.tolist(), "Decoração"]
    assert examples.weights.tolist() == [*without.weights.tolist(), 0.7]


def test_head_choice_reads_only_whether_tags_are_empty() -> None:
    batch = [("a", ""), ("a", "b"), ("", " "), ("", "")]
    assert head_choice(batch).tolist() == [TITLE_HEAD, TAGS_HEAD, TAGS_HEAD, TITLE_HEAD]


def small_listings() -> pd.DataFrame:
    """Forty products of two sellers and two categories, with every field."""
    rng = np.random.default_rng(3)
    words = {"Bebê": ["body", "fralda", "naninha"], "Decoração": ["quadro", "vaso", "almofada"]}
    rows = []
    for i in range(40):
        category = "Bebê" if i % 2 else "Decoração"
        title = " ".join(rng.choice(words[category], 2)) + f" {i}"
        rows.append(
            {
                "title": title,
                "concatenated_tags": words[category][0] if i % 3 else "",
                "query": words[category][1],
                "category": category,
                "seller_id": 100 + i % 4,
                "price": float(rng.uniform(5, 500)),
                "weight": float(rng.uniform(1, 5000)),
                "minimum_quantity": int(rng.integers(1, 20)),
                "express_delivery": int(i % 5 == 0),
            }
        )
    return clean(pd.DataFrame(rows))


def test_the_heads_without_fields_are_trained_as_if_the_fields_did_not_exist() -> None:
    spec = FeatureSpec(n_features=2**10)
    config = TrainConfig(max_iter=5)
    listings = small_listings()
    model = fit(listings, spec, config)
    blind = fit(
        listings.assign(
            seller_id="", price=np.nan, weight=np.nan, minimum_quantity=np.nan, express_delivery=np.nan
        ),
        spec,
        config,
    )
    width = spec.n_features
    for head in TEXT_HEADS:
        np.testing.assert_array_equal(
            model.heads[head].sgd.coef_[:, :width], blind.heads[head].sgd.coef_[:, :width]
        )
        np.testing.assert_array_equal(model.heads[head].sgd.intercept_, blind.heads[head].sgd.intercept_)
        assert not model.heads[head].sgd.coef_[:, width:].any()  # they never see a field
    # The heads with fields learn from them: the sellers' tokens carry weight.
    for head in FIELD_HEADS:
        assert model.heads[head].sgd.coef_[:, width:].any()
    assert model.fields.sellers_ == ("100", "101", "102", "103")


def test_the_tags_twin_mixes_in_a_fit_on_its_views_with_fields_alone() -> None:
    spec = FeatureSpec(n_features=2**10)
    listings = small_listings()
    by_share = {
        share: fit(listings, spec, TrainConfig(max_iter=5, fields_only_share=share)) for share in (0, 0.3, 1)
    }
    plain, mixed, alone = by_share[0], by_share[0.3], by_share[1]
    for head in (*TEXT_HEADS, TITLE_FIELDS_HEAD):  # the share is the tags twin's alone
        np.testing.assert_array_equal(mixed.heads[head].sgd.coef_, plain.heads[head].sgd.coef_)
        np.testing.assert_array_equal(alone.heads[head].sgd.coef_, plain.heads[head].sgd.coef_)
    ends = [model.heads[TAGS_FIELDS_HEAD].sgd for model in (plain, alone)]
    assert not np.allclose(ends[0].coef_, ends[1].coef_)
    np.testing.assert_allclose(
        mixed.heads[TAGS_FIELDS_HEAD].sgd.intercept_,
        0.7 * ends[0].intercept_ + 0.3 * ends[1].intercept_,
        rtol=1e-12,
    )
    # The file's grid rounds each fit's coefficients and the mix, not the intercepts:
    # each rounding is within 2**-COEF_BITS of what it rounds.
    expected = 0.7 * ends[0].coef_ + 0.3 * ends[1].coef_
    scale = 0.7 * np.abs(ends[0].coef_) + 0.3 * np.abs(ends[1].coef_)
    assert (
        np.abs(mixed.heads[TAGS_FIELDS_HEAD].sgd.coef_ - expected) <= 2.0 ** (2 - COEF_BITS) * scale
    ).all()


def test_taking_examples_keeps_each_one_whole() -> None:
    examples = training_examples(listing_rows(), query_weight=0.5, fields_weight=0.8)
    taken = examples.take([9, 0, 8])
    assert taken.docs == [examples.docs[9], examples.docs[0], examples.docs[8]]
    assert taken.fields.sellers == (examples.fields.sellers[9], "", examples.fields.sellers[8])
    np.testing.assert_array_equal(taken.fields.numbers, examples.fields.numbers[[9, 0, 8]])
    assert taken.target.tolist() == examples.target[[9, 0, 8]].tolist()
    assert taken.weights.tolist() == [0.8, 1.0, 0.8]
    assert taken.field_view.tolist() == [True, False, True]


def test_the_second_fit_reads_the_twins_views_with_fields_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Examples] = []
    real = model_module._fit_sgd

    def recording(
        config: TrainConfig,
        tfidf: OccurrenceTfidf,
        counts: sp.csr_matrix,
        fields: FieldTokens,
        examples: Examples,
    ) -> SGDClassifier:
        assert counts.shape[0] == len(examples.docs)
        seen.append(examples)
        return real(config, tfidf, counts, fields, examples)

    monkeypatch.setattr(model_module, "_fit_sgd", recording)
    listings = small_listings()
    config = TrainConfig(max_iter=5)
    fit(listings, FeatureSpec(n_features=2**10), config)
    # Title head, its twin, tags head, its twin, then the tags twin's views with fields.
    assert len(seen) == 5
    twin, alone = seen[3], seen[4]
    expected = twin.take(np.flatnonzero(twin.field_view))
    assert alone.docs == expected.docs
    assert alone.fields.sellers == expected.fields.sellers
    np.testing.assert_array_equal(alone.fields.numbers, expected.fields.numbers)
    np.testing.assert_array_equal(alone.target, expected.target)
    np.testing.assert_array_equal(alone.weights, expected.weights)
    assert alone.field_view.all()
    assert len(alone.docs) == twin.field_view.sum() > 0


def test_without_views_with_fields_the_twins_are_their_text_heads() -> None:
    # fields_weight 0 trains no field block: the tags twin has no views of its own to mix in.
    model = fit(small_listings(), FeatureSpec(n_features=2**10), TrainConfig(max_iter=5, fields_weight=0.0))
    for head in TEXT_HEADS:
        twin = model.heads[head + WITH_FIELDS].sgd
        np.testing.assert_array_equal(twin.coef_, model.heads[head].sgd.coef_)
        np.testing.assert_array_equal(twin.intercept_, model.heads[head].sgd.intercept_)


def test_seller_ids_read_as_every_caller_sends_them() -> None:
    # Whole floats (an integer column with gaps) as digits, text trimmed, missing as "".
    floats = pd.Series([9835835.0, np.nan, 10000000001.0])
    assert seller_ids(floats).tolist() == ["9835835", "", "10000000001"]
    mixed = pd.Series([9835835.0, 12.5, float("inf")])  # one odd value spoils no other
    assert seller_ids(mixed).tolist() == ["9835835", "12.5", "inf"]
    assert seller_ids(pd.Series([" 7 ", None, "loja"], dtype=object)).tolist() == ["7", "", "loja"]
    assert seller_ids(pd.Series([7, 8])).tolist() == ["7", "8"]
