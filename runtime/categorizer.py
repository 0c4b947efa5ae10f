"""The ONNX model behind the API and the batch scorer: load, check, warm up, predict.
Knows no HTTP and no file format."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort

from runtime.identity import model_version

INPUT_TITLE = "title"
INPUT_TAGS = "concatenated_tags"
# The listing fields a model from feature format 4 on takes, each optional: a
# caller that lacks one feeds "" (the seller) or NaN (the numbers).
INPUT_SELLER = "seller_id"
INPUT_PRICE = "price"
INPUT_WEIGHT = "weight"
INPUT_MINIMUM_QUANTITY = "minimum_quantity"
INPUT_EXPRESS_DELIVERY = "express_delivery"
LISTING_FIELDS = (INPUT_SELLER, INPUT_PRICE, INPUT_WEIGHT, INPUT_MINIMUM_QUANTITY, INPUT_EXPRESS_DELIVERY)
# ONNX types of the inputs this wrapper feeds.
STRING = "tensor(string)"
# A column of one input: a sequence of values, or a numpy array of numbers.
Column = Union[Sequence[Any], np.ndarray]
FLOAT = "tensor(float)"
OUTPUT_LABEL = "label"
OUTPUT_PROBABILITIES = "probabilities"


class ModelError(Exception):
    """The model file is missing or unusable; the message is one line."""


class Categorizer:
    """Predicts one category per product with an onnxruntime session."""

    def __init__(self, session: ort.InferenceSession, labels: Tuple[str, ...], version: str = "") -> None:
        self._session = session
        self.labels = labels
        self.version = version  # runtime.identity.model_version of the file loaded
        # The graph's inputs: title and tags, and the listing fields of a model that
        # takes them. Every input but the title is optional: a column a caller lacks is
        # fed as unknown ("" for strings, NaN for numbers).
        self.inputs: Tuple[str, ...] = tuple(i.name for i in session.get_inputs())
        self._types = {i.name: i.type for i in session.get_inputs()}

    @classmethod
    def load(cls, path: str) -> Categorizer:
        """Opens, checks and warms up the model; raises ModelError on any problem."""
        try:
            session = ort.InferenceSession(path, _session_options(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare RuntimeError subclasses
            raise ModelError(f"cannot load model {path!r}: {_one_line(exc)}") from None
        _check_signature(session, path)
        model = cls(session, _read_labels(session, path), model_version(path))
        model._warm_up(path)
        return model

    def predict(self, titles: Sequence[str], tags: Sequence[str]) -> List[str]:
        """One category per title, in one onnxruntime run; tags[i] is "" when the
        product has none. The graph pads every string to the longest one, so callers
        cut big inputs into sub-batches (service/scheduler.py)."""
        if not titles:
            return []  # nothing to run
        feeds = self._feeds({INPUT_TITLE: titles, INPUT_TAGS: tags}, len(titles))
        labels: List[str] = self._session.run([OUTPUT_LABEL], feeds)[0].tolist()
        return labels

    def predict_with_probabilities(self, columns: Mapping[str, Column]) -> Tuple[List[str], np.ndarray]:
        """The categories and the graph's own `probabilities` output (float32, one row per
        product, one column per label in `labels` order) of the products in `columns`:
        one column per model input, `title` required. A string input's column holds str
        ("" for no value); a number input's holds numbers, None or NaN for no value
        (bools count as 0/1). A model input missing from `columns` is unknown for every
        product; names the model does not take are ignored, so a caller can send the
        listing fields to a model from before them. One onnxruntime run: callers cut
        big inputs into sub-batches, as for predict."""
        rows = len(columns[INPUT_TITLE])
        if not rows:
            return [], np.zeros((0, len(self.labels)), dtype=np.float32)
        labels, probabilities = self._session.run(
            [OUTPUT_LABEL, OUTPUT_PROBABILITIES], self._feeds(columns, rows)
        )
        return labels.tolist(), probabilities

    def _feeds(self, columns: Mapping[str, Column], rows: int) -> Dict[str, np.ndarray]:
        feeds = {}
        for name in self.inputs:
            column = columns.get(name)
            if self._types[name] == FLOAT:
                feeds[name] = _numbers(column) if column is not None else np.full(rows, np.nan, np.float32)
            else:
                feeds[name] = _fixed_width(column) if column is not None else _none(rows)
        return feeds

    def _warm_up(self, path: str) -> None:
        # The first run allocates buffers and is several times slower: pay it now,
        # and check end to end that the graph answers with one of its labels.
        try:
            got = self.predict(["Warm-up título de produto"], [""])
        except Exception as exc:  # noqa: BLE001 - any failure here means an unusable model
            raise ModelError(f"model {path!r} fails on a sample input: {_one_line(exc)}") from None
        if len(got) != 1 or got[0] not in self.labels:
            raise ModelError(f"model {path!r} answered {got!r}, not one of its labels")

    def metadata(self) -> Dict[str, str]:
        """The file's metadata, as written at export: labels, feature_spec, metrics,
        training_data_sha256, confidence (a file from before the confidence table has
        none), each a string, most of them JSON."""
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def input_types(self) -> Dict[str, str]:
        """Each graph input's ONNX type, by name: {"title": "tensor(string)", ...}."""
        return dict(self._types)


def _fixed_width(texts: Column) -> np.ndarray:
    # Fixed-width np.str_, not dtype=object: onnxruntime < 1.21 (the last for
    # Python 3.9 is 1.19) keeps a reference to every str of an object input,
    # leaking all the text it was given (microsoft/onnxruntime#22271). But onnxruntime
    # reads each np.str_ element as a C string, so a NUL would end it there:
    # NULs become the space the feature spec folds them to anyway. Lone UTF-16
    # surrogates never get here: the service refuses them (service/schema.py), and
    # text decoded from Arrow or a file cannot hold them (it is valid UTF-8).
    return np.array([text.replace("\x00", " ") if "\x00" in text else text for text in texts], dtype=np.str_)


def _numbers(values: Column) -> np.ndarray:
    # float32 is the graph's input type: the model's bin edges are float32 values,
    # so a number is binned as the caller's value rounded to float32 (to nearest).
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float32)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float32)


def _none(rows: int) -> np.ndarray:
    return np.zeros(rows, dtype="<U1")  # rows of "": the value for "none" of every text input


def _session_options() -> ort.SessionOptions:
    # One thread per session: parallelism comes from worker processes (one per CPU),
    # and extra intra-op threads would only fight them for the same cores.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: warnings would go to stderr per worker
    return options


def _check_signature(session: ort.InferenceSession, path: str) -> None:
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if not {INPUT_TITLE, INPUT_TAGS} <= inputs or not {OUTPUT_LABEL, OUTPUT_PROBABILITIES} <= outputs:
        raise ModelError(
            f"model {path!r} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; expected "
            f"inputs {INPUT_TITLE!r}, {INPUT_TAGS!r} and outputs {OUTPUT_LABEL!r}, {OUTPUT_PROBABILITIES!r}"
        )
    # This wrapper feeds strings and float32 numbers only: a file that wants another
    # type would fail on every request, so it fails here instead.
    odd = [f"{i.name} ({i.type})" for i in session.get_inputs() if i.type not in (STRING, FLOAT)]
    if odd:
        raise ModelError(f"model {path!r} has inputs of types this service cannot feed: {', '.join(odd)}")


def _read_labels(session: ort.InferenceSession, path: str) -> Tuple[str, ...]:
    raw = session.get_modelmeta().custom_metadata_map.get("labels")
    try:
        labels = json.loads(raw) if raw is not None else None
    except ValueError:
        labels = None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ModelError(f"model {path!r} has no valid 'labels' metadata (a JSON list of names)")
    return tuple(labels)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
