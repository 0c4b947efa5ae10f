"""What a run is asked to do, how it can fail, and what it did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


class JobError(Exception):
    """INPUT, OUTPUT or the model cannot be used: exit 2, the message is one line."""


class Refused(Exception):
    """--strict and a row without a title, or with an invalid listing field: exit 1, the
    message is one line."""


@dataclass(frozen=True)
class Job:
    input: str
    output: str
    model: str
    strict: bool = False
    processes: int = 0  # local engine: scoring processes; 0: one per CPU
    master: Optional[str] = None  # spark engine: None leaves it to spark-submit, else local[*]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, for an error line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
