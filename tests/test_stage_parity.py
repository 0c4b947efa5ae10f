"""Stage by stage, the ONNX graph computes what the scikit-learn twin computes.

Each test builds graphs that expose one stage's tensors (onnx_graph.build_model's
`expose`) and compares them with the same stage of sklearn_twin, so a failure
names the stage that broke. Per-place stages are compared as each row's bag of
real values (the graph keeps n-grams that run past their row's end, marked not
valid); per-row stages row by row. End-to-end parity is tests/test_onnx_parity.py.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from categorizer import export, prepare
from categorizer import sklearn_twin as twin
from categorizer.features import (
    BLOCK_SCORES,
    BUCKETS,
    CHAR_FINGERPRINTS,
    FIELD_TOKENS,
    HEAD_CHOICE,
    NUMBER_FIELDS,
    PROBABILITIES,
    SKIP_FINGERPRINTS,
    STAGES,
    STREAM,
    WORD_FINGERPRINTS,
    Doc,
)
from categorizer.model import Model, weights_of
from categorizer.onnx_graph import build_model, feeds
from categorizer.prepare import docs
from categorizer.sklearn_twin import Fields
from tests.datasets import model_file, public_test_csv
from tests.test_onnx_parity import LATIN, RANDOM_MODELS, SELLERS, TEXT, adversarial_pairs, field_combinations

Outputs = Dict[str, np.ndarray]


def exposing(model: Model) -> ort.InferenceSession:
    onx = build_model(model.spec, weights_of(model), model.labels, {}, model.fields, expose=STAGES)
    return ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])


SESSIONS = {name: exposing(model) for name, model in RANDOM_MODELS.items()}


def run(session: ort.InferenceSession, batch: Sequence[Doc], fields: Fields) -> Outputs:
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds(batch, fields))))


def some_fields(rows: int) -> Fields:
    """Fields for `rows` products: row i has field f unknown when bit f of i is set,
    sellers known and not, numbers below, on and above the default edges."""
    sellers = [SELLERS[i % len(SELLERS)] if i % 7 else "unknown seller" for i in range(rows)]
    numbers = [[0.1 * 3**i % 500, 2.0**i % 70000, float(i % 5), float(i % 2)] for i in range(rows)]
    return field_combinations(Fields.of(sellers, dict(zip(NUMBER_FIELDS, np.array(numbers).T))))


def bags(out: Outputs, prefix: str, n_rows: int) -> List[List[int]]:
    """Each real row's sorted valid values from a stage's (values, valid, rows) outputs."""
    values, valid, rows = out[f"{prefix}.values"], out[f"{prefix}.valid"], out[f"{prefix}.rows"]
    if values.size == 0:
        return [[] for _ in range(n_rows)]
    kept_rows = np.broadcast_to(rows, values.shape)[valid]
    kept = values[valid]
    return [sorted(kept[kept_rows == row].tolist()) for row in range(n_rows)]


# --- what each stage of the twin says for a batch ------------------------------


def expected_stream(model: Model, batch: Sequence[Doc]) -> List[List[int]]:
    return [twin.stream(model.spec, doc) for doc in batch]


def onnx_stream(out: Outputs, n_rows: int) -> List[List[int]]:
    codes, rows = out[f"{STREAM}.codes"], out[f"{STREAM}.rows"]
    return [codes[rows == row].tolist() for row in range(n_rows)]


def fingerprints_of(model: Model, batch: Sequence[Doc], family: Callable[..., List[int]]) -> List[List[int]]:
    return [sorted(family(model.spec, twin.stream(model.spec, doc))) for doc in batch]


def bucket_bags(model: Model, batch: Sequence[Doc], block: int) -> List[List[int]]:
    found = [twin.block_fingerprints(model.spec, doc)[block] for doc in batch]
    return [sorted(twin.buckets(model.spec, np.array(fps, dtype=np.int64)).tolist()) for fps in found]


def check_stage(
    stage: str, model: Model, session: ort.InferenceSession, batch: List[Doc], fields: Optional[Fields] = None
) -> None:
    fields = some_fields(len(batch)) if fields is None else fields
    out, n = run(session, batch, fields), len(batch)
    if stage == STREAM:
        assert onnx_stream(out, n) == expected_stream(model, batch)
    elif stage == CHAR_FINGERPRINTS:
        assert bags(out, stage, n) == fingerprints_of(model, batch, twin.char_fingerprints)
    elif stage == WORD_FINGERPRINTS:
        assert bags(out, stage, n) == fingerprints_of(model, batch, twin.word_fingerprints)
    elif stage == SKIP_FINGERPRINTS:
        assert bags(out, stage, n) == fingerprints_of(model, batch, twin.skip_fingerprints)
    elif stage == BUCKETS:
        assert bags(out, f"{stage}.chars", n) == bucket_bags(model, batch, twin.CHAR_BLOCK)
        assert bags(out, f"{stage}.words", n) == bucket_bags(model, batch, twin.WORD_BLOCK)
    elif stage == FIELD_TOKENS:
        # Tokens are [fields, N + 1]; the padding row's are each field's unknown.
        tokens = model.fields.tokens(fields).tolist()
        assert out[f"{stage}.tokens"].T.tolist() == [*tokens, model.fields.starts_.tolist()]
        assert out[f"{stage}.known"][:n].tolist() == model.fields.known(fields).tolist()
    elif stage == HEAD_CHOICE:
        expected = twin.head_choice(batch, model.fields.known(fields))
        assert out[f"{stage}.heads"][:n].tolist() == expected.tolist()
    elif stage == BLOCK_SCORES:
        for part, expected in zip(("chars", "words", "fields"), model.block_scores(batch, fields)):
            np.testing.assert_allclose(out[f"{stage}.{part}"][:n], expected, rtol=1e-9, atol=1e-12)
    elif stage == PROBABILITIES:
        check_probabilities(model, out, batch, fields)
    else:
        raise AssertionError(f"no parity check for stage {stage!r}")


def check_probabilities(model: Model, out: Outputs, batch: List[Doc], fields: Fields) -> None:
    decision = model.decision_function(batch, fields)
    np.testing.assert_allclose(out[f"{PROBABILITIES}.scores"], decision, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(batch, fields), atol=1e-6)
    assert out["label"].tolist() == model.predict(batch, fields).tolist()


# --- the tests: one per stage ----------------------------------------------------


def test_every_stage_has_a_parity_check() -> None:
    model, session = RANDOM_MODELS["default"], SESSIONS["default"]
    for stage in STAGES:
        check_stage(stage, model, session, [("Kit chá de bebê azul", ""), ("x", "menino")])


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", sorted(RANDOM_MODELS))
def test_stage_matches_on_adversarial_text(stage: str, name: str) -> None:
    titles, tags = adversarial_pairs()
    check_stage(stage, RANDOM_MODELS[name], SESSIONS[name], docs(titles, tags))


@pytest.mark.parametrize("stage", STAGES)
@settings(max_examples=12, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(TEXT, LATIN), st.one_of(TEXT, LATIN)), min_size=1, max_size=6))
def test_stage_matches_on_generated_text(stage: str, rows: List[Tuple[str, str]]) -> None:
    for name, model in RANDOM_MODELS.items():
        check_stage(stage, model, SESSIONS[name], rows)


@pytest.fixture(scope="module")
def artifact() -> Tuple[Model, ort.InferenceSession]:
    model = export.load_reference(model_file())
    return model, exposing(model)


@pytest.mark.parametrize("stage", STAGES)
def test_artifact_stage_matches_on_public_test_file(
    stage: str, artifact: Tuple[Model, ort.InferenceSession]
) -> None:
    frame = prepare.clean(pd.read_csv(public_test_csv())).head(200)
    tags = [tag if i % 2 else "" for i, tag in enumerate(frame["concatenated_tags"])]
    fields = field_combinations(prepare.fields_of(frame))
    check_stage(stage, *artifact, docs(frame["title"].tolist(), tags), fields)
