"""Validation: a leakage-free split and the metrics we report."""

from __future__ import annotations

import io
import unicodedata
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from sklearn.model_selection import StratifiedGroupKFold

from categorizer.features import SELLER, Doc
from categorizer.model import RANDOM_STATE
from categorizer.prepare import VIEWS, docs, view
from categorizer.sklearn_twin import Fields

# One fold in five held out: about 20% of the product/title groups.
N_FOLDS = 5


def grouped_split(frame: pd.DataFrame, groups: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation): whole groups on one side, classes stratified."""
    splitter = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=RANDOM_STATE)
    train, valid = next(splitter.split(frame, frame["category"], groups))
    return train, valid


def report(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> Dict[str, Any]:
    """Macro-F1, accuracy, per class. Macro-F1 is the headline because the classes
    are imbalanced (see docs/decisions.md, 'Macro-F1 is the headline metric')."""
    per_class = classification_report(
        truth, predicted, labels=list(labels), output_dict=True, zero_division=0
    )
    return {
        "macro_f1": float(f1_score(truth, predicted, labels=list(labels), average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "n": len(truth),
        "per_class": {
            label: {
                key: float(per_class[label][key]) for key in ("precision", "recall", "f1-score", "support")
            }
            for label in labels
        },
    }


def confusion(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Row-normalised confusion matrix: each row is where one true class went."""
    counts: np.ndarray = confusion_matrix(truth, predicted, labels=list(labels)).astype(float)
    shares: np.ndarray = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    return shares


def confusion_png(matrix: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """The confusion matrix as a PNG: shown by the notebook, written only by the export step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return _png(fig)


def f1_png(reports: Dict[str, Dict[str, Any]], labels: Sequence[str]) -> bytes:
    """Per-class F1 as a PNG, one bar group per evaluated input (title only, title + tags...)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(reports), 1)
    for offset, (name, rep) in enumerate(reports.items()):
        scores = [rep["per_class"][label]["f1-score"] for label in labels]
        ax.bar(
            np.arange(len(labels)) + offset * width,
            scores,
            width,
            label=f"{name} (macro {rep['macro_f1']:.3f})",
        )
    ax.set_xticks(np.arange(len(labels)) + width * (len(reports) - 1) / 2, labels, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.legend(loc="lower right")
    return _png(fig)


def _png(fig: Any) -> bytes:
    """The figure's PNG bytes; closed, so a notebook shows it only where it is displayed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


Predict = Callable[[List[Doc], Optional[Fields]], np.ndarray]


def evaluate(
    predict: Predict, frame: pd.DataFrame, labels: Sequence[str], train: Optional[pd.DataFrame] = None
) -> Dict[str, Any]:
    """A report per input view (prepare.VIEWS: the title alone, with tags, with the
    listing fields, with both). Given the `train` rows, each report also says how
    products of sellers seen in training and of the others fare (sellers())."""
    truth = frame["category"].tolist()
    reports = {}
    for name in VIEWS:
        predicted = list(predict(*view(frame, name)))
        reports[name] = report(truth, predicted, labels)
        if train is not None:
            reports[name]["sellers"] = sellers(truth, predicted, labels, seller_groups(frame, train))
    return reports


def seller_groups(frame: pd.DataFrame, train: pd.DataFrame) -> Dict[str, np.ndarray]:
    """Masks of `frame`'s rows: sellers seen in `train`, the others, and products
    of seen sellers outside the seller's main category in `train` (a seller
    trying a new line: where a seller's history points the wrong way)."""
    main = train.groupby(SELLER)["category"].agg(lambda c: c.value_counts().index[0])
    known = frame[SELLER].isin(main.index).to_numpy() & (frame[SELLER] != "").to_numpy()
    usual = frame[SELLER].map(main).to_numpy()
    return {"seen": known, "unseen": ~known, "seen_new_line": known & (usual != frame["category"].to_numpy())}


def sellers(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str], groups: Dict[str, np.ndarray]
) -> Dict[str, Dict[str, float]]:
    """Macro-F1, accuracy and size of each seller group (seller_groups)."""
    true, pred = np.asarray(truth, dtype=object), np.asarray(predicted, dtype=object)
    return {
        name: {
            "macro_f1": float(
                f1_score(true[mask], pred[mask], labels=list(labels), average="macro", zero_division=0)
            ),
            "accuracy": float(np.mean(true[mask] == pred[mask])) if mask.any() else 0.0,
            "n": int(mask.sum()),
        }
        for name, mask in groups.items()
    }


def strip_accents(text: str) -> str:
    """What users type without a Portuguese keyboard: "bebe" for "bebê"."""
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def accent_invariance(predict: Predict, titles: Sequence[str]) -> float:
    """Share of titles whose label survives stripping their accents."""
    original = predict(docs(list(titles)), None)
    stripped = predict(docs([strip_accents(title) for title in titles]), None)
    return float(np.mean(original == stripped))
