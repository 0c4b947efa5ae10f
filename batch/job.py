"""What a run is asked to do, how it can fail, and what it did."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
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
        """OUTPUT may not be INPUT, a link to it, or a file inside INPUT's directory of
        parts: the scored copy would replace, or join, the catalogue it was read from, and
        a slip of the keyboard should not cost it."""
        source, target = Path(self.input).resolve(), Path(self.output).resolve()
        if source.is_dir() and source in target.parents:
            raise JobError(f"OUTPUT {self.output} is inside INPUT {self.input}; name a path outside it")
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
