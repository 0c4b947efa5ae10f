"""The tf-idf weighting the graph reproduces: occurrence l2 norms, one per block."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from categorizer.model import OccurrenceTfidf


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


def test_an_empty_block_stays_zero_and_leaves_the_other_alone() -> None:
    tfidf = fitted([1.0, 2.0, 3.0, 4.0], block_width=2)
    counts = sp.csr_matrix([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(tfidf.transform(counts).toarray(), [[0.0, 0.0, 1.0, 0.0], [0.0] * 4])


def test_without_repeats_a_block_has_unit_l2_norm() -> None:
    rng = np.random.default_rng(0)
    tfidf = fitted(list(rng.uniform(1.0, 9.0, 8)), block_width=4)
    counts = sp.csr_matrix((rng.uniform(size=(5, 8)) < 0.5).astype(float))
    weighted = tfidf.transform(counts).toarray()
    for block in (weighted[:, :4], weighted[:, 4:]):
        norms = np.linalg.norm(block, axis=1)
        np.testing.assert_allclose(norms[norms > 0], 1.0)
