"""Run a notebook headless and show what it does: ``python -m categorizer.notebook NOTEBOOK [OUTPUT]``.

Used by ``make train`` and by the notebook test; run it from the project root,
where the kernel runs too, so that relative paths in the environment mean the
same to both.

The notebook's level-2 headings ("## 1. Extraction") are its steps. When a
step ends the runner prints a line with its name and duration, then what its
cells printed: the notebook prints its headline facts and metrics, and shows
everything else (tables, figures) as cell results. On a terminal a progress
bar counts the cells.

After a successful run the executed copy, with outputs and figures, goes to
OUTPUT (default ``ARTIFACTS_DIR/<notebook>.executed.ipynb``), a Markdown
render beside it (``<notebook>.md``, its figures in ``<notebook>_files/``),
and a summary lists the files the run wrote. A failure prints
``error: Type: message`` first, then the failing cell's traceback in plain
text, exits with 1, and writes nothing. The kernel process's own stderr (C
libraries' messages, the kernel's logs) is held back until then, and printed
after that line on a failure, at the end on a success: a kernel that prints as
it shuts down cannot come before the error line.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import MarkdownExporter
from nbconvert.filters import strip_ansi
from nbconvert.writers.files import FilesWriter
from tqdm import tqdm
from traitlets.config import Config

from categorizer.config import TrainSettings
from categorizer.data import DatasetError

# Far longer than any cell takes, even a fit on a loaded machine: a stuck cell
# should not hang CI for its whole budget.
CELL_TIMEOUT_SECONDS = 600
# The step of the cells before the first heading (imports, settings).
SETUP = "Setup"
# Tables render as text in the Markdown copy: pandas' HTML carries a <style>
# block that code hosts print as text.
RENDER_PRIORITY = ["text/markdown", "image/png", "text/plain"]
PROGRESS_FORMAT = "{desc}{bar:30} {n}/{total} cells [{elapsed}]"


@dataclass
class Step:
    title: str
    # Indexes of the step's code cells in the notebook.
    cells: List[int] = field(default_factory=list)


def steps(nb: nbformat.NotebookNode) -> List[Step]:
    """The notebook's steps: code cells grouped under the level-2 heading above them."""
    found = [Step(SETUP)]
    for index, cell in enumerate(nb.cells):
        heading = _heading(cell)
        if heading is not None:
            found.append(Step(heading))
        elif cell.cell_type == "code" and cell.source.strip():
            found[-1].cells.append(index)
    return [step for step in found if step.cells]


def _heading(cell: nbformat.NotebookNode) -> Optional[str]:
    first_line = cell.source.lstrip().split("\n", 1)[0]
    if cell.cell_type == "markdown" and first_line.startswith("## "):
        return str(first_line[3:].strip())
    return None


class Progress:
    """nbclient hooks: a line per finished step, and a bar over the cells on a terminal."""

    def __init__(self, nb: nbformat.NotebookNode, out: TextIO, bar: bool) -> None:
        self._steps = steps(nb)
        self._step_of = {index: step for step in self._steps for index in step.cells}
        self._out = out
        self._printed: List[str] = []
        self._step_started = time.perf_counter()
        self.current = self._steps[0].title if self._steps else SETUP
        total = sum(len(step.cells) for step in self._steps)
        # No rate or ETA: cells take from milliseconds to a minute, so both would mislead.
        self._bar = tqdm(
            total=total, disable=not bar, leave=False, file=sys.stderr, bar_format=PROGRESS_FORMAT
        )

    def cell_execute(self, cell_index: int, **_: Any) -> None:
        self.current = self._step_of[cell_index].title
        self._bar.set_description(self.current)

    def cell_executed(
        self, cell: nbformat.NotebookNode, cell_index: int, execute_reply: Dict[str, Any]
    ) -> None:
        if execute_reply["content"]["status"] != "ok":
            return
        self._printed += stdout_lines(cell)
        self._bar.update()
        step = self._step_of[cell_index]
        if cell_index == step.cells[-1]:
            self._report(step)

    def _report(self, step: Step) -> None:
        now = time.perf_counter()
        lines = [f"{step.title:<20} {now - self._step_started:6.1f} s", *(f"    {x}" for x in self._printed)]
        tqdm.write("\n".join(lines), file=self._out)
        self._out.flush()
        self._printed, self._step_started = [], now

    def close(self) -> None:
        self._bar.close()


def stdout_lines(cell: nbformat.NotebookNode) -> List[str]:
    """What the cell printed to stdout, line by line (not its results, not stderr)."""
    text = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    return text.splitlines()


def execute(nb: nbformat.NotebookNode, cwd: Path, progress: Progress, kernel_stderr: TextIO) -> None:
    """Run every cell of `nb` in place, in a fresh kernel started in `cwd`, the kernel
    process's stderr going to `kernel_stderr` (a file)."""
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
        on_cell_execute=progress.cell_execute,
        on_cell_executed=progress.cell_executed,
    )
    client.execute(stderr=kernel_stderr)


def render_markdown(nb: nbformat.NotebookNode, directory: Path, name: str) -> List[Path]:
    """`name`.md in `directory`, its figures as PNG files in `name`_files/ (replaced whole)."""
    files = directory / f"{name}_files"
    shutil.rmtree(files, ignore_errors=True)
    exporter = MarkdownExporter(config=Config({"NbConvertBase": {"display_data_priority": RENDER_PRIORITY}}))
    body, resources = exporter.from_notebook_node(
        nb, resources={"unique_key": name, "output_files_dir": files.name}
    )
    FilesWriter(build_directory=str(directory)).write(body, resources, notebook_name=name)
    return [directory / f"{name}.md", files]


def written_since(started: float, places: Sequence[Path]) -> List[Path]:
    """Files in `places` (files or directories) modified at or after `started` (a time.time())."""
    candidates = {p for place in places for p in ([place, *place.rglob("*")] if place.is_dir() else [place])}
    return sorted(p for p in candidates if p.is_file() and p.stat().st_mtime >= started)


def kernel_output(kernel_stderr: TextIO) -> str:
    """What the kernel process wrote to its stderr, under a heading; "" if nothing."""
    kernel_stderr.seek(0)
    text = kernel_stderr.read().rstrip()
    return f"\nthe kernel's own stderr:\n{text}" if text else ""


def print_kernel_output(kernel_stderr: TextIO) -> None:
    text = kernel_output(kernel_stderr)
    if text:
        print(text.lstrip("\n"), file=sys.stderr, flush=True)


def fail(line: str, details: str = "") -> int:
    """The one line that says what went wrong, first; then the details, if any."""
    print(f"error: {line}", file=sys.stderr)
    if details:
        print(details.rstrip(), file=sys.stderr)
    sys.stderr.flush()
    return 1


def run(notebook: Path, output: Optional[Path]) -> int:
    try:
        # Before a kernel starts: a wrong path costs one line, not a traceback.
        settings = TrainSettings.from_env()
    except (DatasetError, ValueError) as exc:
        return fail(f"{type(exc).__name__}: {exc}")
    output = output or settings.artifacts_dir / f"{notebook.stem}.executed.ipynb"
    files = (output, settings.metrics_path, settings.model_path)
    blocked = [path for path in files if not _can_create(path)]
    if blocked:  # found now, not after the export has replaced the model
        return fail(
            f"cannot write {blocked[0]}: a directory, or no directory there that this process may write in"
        )
    print(
        f"running {notebook}: data {settings.dataset_path}, artifacts to {settings.artifacts_dir}/",
        flush=True,
    )
    started, clock = time.time(), time.perf_counter()
    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except (OSError, ValueError) as exc:  # missing, unreadable, or not a notebook (NotJSONError)
        return fail(f"cannot read the notebook {notebook}: {type(exc).__name__}: {exc}")
    progress = Progress(nb, sys.stdout, bar=sys.stderr.isatty())
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as kernel_stderr:
        try:
            try:
                execute(nb, Path.cwd(), progress, kernel_stderr)
            finally:
                progress.close()  # before any error line, which would land on the bar's
            output.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(output))
            rendered = render_markdown(nb, output.parent, notebook.stem)
        except CellExecutionError as exc:
            details = f"in step {progress.current}:\n{strip_ansi(str(exc))}"
            return fail(f"{exc.ename}: {exc.evalue}", details + kernel_output(kernel_stderr))
        except Exception as exc:  # noqa: BLE001 -- a timeout or a dead kernel gets its one line first too
            # chain=False: errors out of jupyter_core's event-loop wrapper can carry the
            # RuntimeError("no running event loop") it caught, which says nothing here.
            details = f"in step {progress.current}:\n{traceback.format_exc(chain=False)}"
            return fail(f"{type(exc).__name__}: {exc}", details + kernel_output(kernel_stderr))
        except BaseException:  # Ctrl-C: what the kernel said may tell why it hung
            print_kernel_output(kernel_stderr)
            raise
        written = written_since(started, [settings.artifacts_dir, settings.metrics_path, output, *rendered])
        print(f"done in {time.perf_counter() - clock:.0f} s; wrote {len(written)} files:")
        print("\n".join(f"    {path}" for path in written), flush=True)
        print_kernel_output(kernel_stderr)
    return 0


def _can_create(path: Path) -> bool:
    """Whether the file `path` can be written: it is not a directory, and its nearest
    existing ancestor is a directory this process may write in."""
    if path.is_dir():
        return False
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def main(argv: Sequence[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m categorizer.notebook NOTEBOOK [OUTPUT]", file=sys.stderr)
        return 2
    return run(Path(argv[0]), Path(argv[1]) if len(argv) == 2 else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
