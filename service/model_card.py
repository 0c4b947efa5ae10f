"""`GET /v1/model`: which model a server runs and what it promises, read once from the
file. No aiohttp: the handler returns the encoded card.

Everything comes from the file: its identity (runtime.identity), its inputs, and the
metadata export wrote (categorizer/weights.py names the keys; the service cannot import
the training package, so tests/test_model_card.py checks the two lists agree). A key an
older file lacks, or cannot be read, is left out of the card rather than failing start-up:
the confidence table, notably, is only in files exported since it exists.
"""

import logging
from typing import Any, Dict, List, Optional

import msgspec

from runtime.categorizer import INPUT_TITLE, Categorizer

log = logging.getLogger("categorizer")

# Metadata keys, as categorizer/weights.py writes them.
FEATURE_SPEC_KEY = "feature_spec"
METRICS_KEY = "metrics"
DATA_SHA256_KEY = "training_data_sha256"
CONFIDENCE_KEY = "confidence"


class ModelInput(msgspec.Struct):
    """One input of the graph: `title` is required; any other is optional: `concatenated_tags`
    and, in a model trained with them, the listing fields (`seller_id`, "" meaning unknown;
    `price`, `weight`, `minimum_quantity`, `express_delivery`, NaN meaning unknown)."""

    name: str
    type: str
    optional: bool


class ThresholdRow(msgspec.Struct):
    """Of the validation products whose top probability is >= `threshold`: their share
    of all products (`coverage`) and the share of them whose category is right
    (`precision`, null when there are none)."""

    threshold: float
    coverage: float
    precision: Optional[float]


class ConfidenceView(msgspec.Struct):
    """The confidence table of one input view, on `n` validation products: the expected
    calibration error over `bins` equal-width bins of the top probability, and a row
    per threshold."""

    n: int
    ece: float
    bins: int
    thresholds: List[ThresholdRow]


class ModelCard(msgspec.Struct, omit_defaults=True):
    version: str
    labels: List[str]
    inputs: List[ModelInput]
    feature_spec_format_version: Optional[int] = None
    training_data_sha256: Optional[str] = None
    metrics: Optional[Dict[str, Any]] = None
    # By input view: "title_only", "title_and_tags".
    confidence: Optional[Dict[str, ConfidenceView]] = None


def model_card(model: Categorizer) -> ModelCard:
    meta = model.metadata()
    spec = _decode(meta, FEATURE_SPEC_KEY, Dict[str, Any])
    version = spec.get("format_version") if spec is not None else None
    return ModelCard(
        version=model.version,
        labels=list(model.labels),
        inputs=[ModelInput(name, kind, name != INPUT_TITLE) for name, kind in model.input_types().items()],
        feature_spec_format_version=version if isinstance(version, int) else None,
        training_data_sha256=meta.get(DATA_SHA256_KEY),
        metrics=_decode(meta, METRICS_KEY, Dict[str, Any]),
        confidence=_decode(meta, CONFIDENCE_KEY, Dict[str, ConfidenceView]),
    )


def _decode(meta: Dict[str, str], key: str, kind: Any) -> Any:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:  # ValidationError included
        log.warning("model metadata left out of /v1/model", extra={"key": key, "reason": str(exc)})
        return None
