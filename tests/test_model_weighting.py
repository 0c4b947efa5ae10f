"""The scikit-learn side the graph reproduces: two blocks, an occurrence l2 norm per block."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from categorizer.features import FeatureSpec
from categorizer.heads import TAGS_HEAD, TITLE_HEAD
from categorizer.prepare import clean, training_examples
from categorizer.sklearn_twin import NgramCounts, OccurrenceTfidf, head_choice


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
