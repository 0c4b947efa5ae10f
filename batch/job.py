"""What a run is asked to do, how it can fail, and what it did."""

from __future__ import annotations

import os
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

    def refuse_input_as_output(self) -> None:
        """OUTPUT may not name INPUT (or a link to it): the scored copy would replace the
        catalogue it was read from, and a slip of the keyboard should not cost it."""
        try:
            same = os.path.samefile(self.input, self.output)
        except OSError:  # either is missing: the reader or the writer says so in its words
            return
        if same:
            raise JobError(f"OUTPUT {self.output} is INPUT {self.input}; name another file")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, for an error line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
