"""Export: the fitted model as one self-contained ONNX file, plus metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import onnx
from onnx import numpy_helper

from categorizer.features import SELLER, UNITS, FeatureSpec
from categorizer.model import Model, from_weights, weights_of
from categorizer.onnx_graph import build_model
from categorizer.sklearn_twin import FieldTokens
from categorizer.weights import (
    CONFIDENCE_KEY,
    DATA_SHA256_KEY,
    FEATURE_SPEC_KEY,
    INPUTS_KEY,
    LABELS_KEY,
    METRICS_KEY,
    read_heads,
)


def to_onnx(
    model: Model,
    metrics: Mapping[str, Any],
    data_sha256: str,
    confidence: Optional[Mapping[str, Any]] = None,
) -> onnx.ModelProto:
    """The model as one ONNX file; `confidence` is the table of categorizer.confidence."""
    metadata = {
        LABELS_KEY: json.dumps(model.labels, ensure_ascii=False),
        FEATURE_SPEC_KEY: model.spec.to_json(),
        METRICS_KEY: json.dumps(metrics, ensure_ascii=False, sort_keys=True),
        DATA_SHA256_KEY: data_sha256,
        INPUTS_KEY: json.dumps(INPUTS, ensure_ascii=False, sort_keys=True),
    }
    if confidence is not None:
        metadata[CONFIDENCE_KEY] = json.dumps(confidence, ensure_ascii=False, sort_keys=True)
    return build_model(model.spec, weights_of(model), model.labels, metadata, model.fields)


# What each input is, for callers in any language (the INPUTS_KEY metadata).
INPUTS: Dict[str, Dict[str, str]] = {
    "title": {"type": "string", "unknown": "required: the product's title"},
    "concatenated_tags": {
        "type": "string",
        "unknown": '""',
        "meaning": "the product's tags, space-separated",
    },
    SELLER: {"type": "string", "unknown": '""', "meaning": "the seller's id, as a decimal string"},
    **{name: {"type": "float32", "unknown": "NaN", "unit": unit} for name, unit in UNITS.items()},
}


def save(model: onnx.ModelProto, path: Path) -> Path:
    return write_all({path: model.SerializeToString()})[0]


def metrics_json(metrics: Mapping[str, Any]) -> bytes:
    """metrics.json's bytes."""
    return (json.dumps(metrics, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_all(files: Mapping[Path, bytes]) -> List[Path]:
    """Write every file whole, or none of them; returns their paths.

    A run that fails mid-write must not leave a truncated model where the service would
    load it, nor a new model beside the last run's metrics: each file's bytes go to a
    file beside it, and only once all of them are written do renames put them in place.
    """
    taken = [path for path in files if path.is_dir()]
    if taken:  # a rename onto it would fail after the others had been done
        raise IsADirectoryError(f"{taken[0]} is a directory")
    staged: List[Path] = []
    try:
        for path, content in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.append(path.with_name(f".{path.name}.partial"))
            staged[-1].write_bytes(content)
        for partial, path in zip(staged, files):
            os.replace(partial, path)
    finally:
        for partial in staged:
            partial.unlink(missing_ok=True)
    return list(files)


def read_metadata(path: Path) -> Dict[str, str]:
    """The file's metadata_props, without loading the weights into a session."""
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def load_reference(path: Path) -> Model:
    """The scikit-learn twin of an exported file: its spec and weights, no training.

    Parity tests score with it, so that a committed artifact is checked against
    the Python realisation of its own feature spec.
    """
    model = onnx.load(str(path))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    meta = {prop.key: prop.value for prop in model.metadata_props}
    spec = FeatureSpec.from_json(meta[FEATURE_SPEC_KEY])
    sellers = _sellers(model)
    values = FieldTokens(spec).set_sellers(sellers).values_()
    return from_weights(spec, read_heads(weights, values), json.loads(meta[LABELS_KEY]), sellers)


def _sellers(model: onnx.ModelProto) -> List[str]:
    """The seller tokens' ids: the keys of the LabelEncoder that reads the seller input."""
    for node in model.graph.node:
        if node.op_type == "LabelEncoder" and list(node.input) == [SELLER]:
            keys = next(a for a in node.attribute if a.name == "keys_strings")
            return [key.decode("utf-8") for key in keys.strings]
    return []
