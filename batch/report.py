"""What a run tells its user: a progress bar on a terminal, and a one-line summary."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Dict, Optional

from tqdm import tqdm


@dataclass
class Summary:
    rows: int = 0
    skipped: int = 0  # rows with a missing or blank title: no category, no confidence
    seconds: float = 0.0
    # A listing field's column -> its invalid values, scored as unknown.
    invalid: Dict[str, int] = field(default_factory=dict)

    def count_invalid(self, column: str, values: int) -> None:
        self.invalid[column] = self.invalid.get(column, 0) + values

    def line(self, output: str) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return (
            f"scored {self.rows:,} rows in {self.seconds:.1f} s ({rate:,.0f} rows/s), "
            f"{self.skipped:,} skipped (blank title){self._invalid_part()}; wrote {output}"
        )

    def _invalid_part(self) -> str:
        counts = [f"{count:,} {name}" for name, count in self.invalid.items() if count]
        return f", invalid values read as unknown: {', '.join(counts)}" if counts else ""


class Progress:
    """Rows done, as a tqdm bar on stderr when stderr is a terminal; else nothing, so
    that logs and pipes get the summary line alone."""

    def __init__(self) -> None:
        self._bar: Optional[tqdm] = None

    def start(self, total: Optional[int]) -> None:
        """total: INPUT's rows when its format says (Parquet), else None (CSV)."""
        self._bar = tqdm(total=total, unit=" rows", unit_scale=True, file=sys.stderr, disable=None)

    def advance(self, rows: int) -> None:
        if self._bar is not None:
            self._bar.update(rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
