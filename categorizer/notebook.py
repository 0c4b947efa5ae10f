"""Execute a notebook headless: ``python -m categorizer.notebook NOTEBOOK [OUTPUT]``.

Used by ``make train`` and by the notebook test. The executed copy goes to
OUTPUT when given; the committed notebook stays stripped of outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import nbformat
from nbclient import NotebookClient

# The full training run takes about two minutes here; a stuck cell should not
# hang CI for its whole budget.
CELL_TIMEOUT_SECONDS = 600


def execute(
    notebook: Path, output: Optional[Path] = None, cwd: Optional[Path] = None
) -> nbformat.NotebookNode:
    nb = nbformat.read(str(notebook), as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd or notebook.resolve().parent)}},
    )
    client.execute()
    if output is not None:
        nbformat.write(nb, str(output))
    return nb


def main(argv: Sequence[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m categorizer.notebook NOTEBOOK [OUTPUT]", file=sys.stderr)
        return 2
    execute(Path(argv[0]), Path(argv[1]) if len(argv) == 2 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
