"""`python score.py INPUT OUTPUT [--model PATH] [--engine local|spark] ...`: arguments,
exit codes and the lines a run prints.

Exit codes: 0 done; 1 --strict found a row without a title or with an invalid listing
field; 2 INPUT, OUTPUT or the model cannot be used, or a scoring process died (one
`error:` line on stderr, and OUTPUT is not written); 130 stopped by Ctrl-C (one line too);
143 stopped by SIGTERM (no line; OUTPUT is not written either). The spark engine's
failures inside Spark itself (a lost executor, Ctrl-C during a job) are Spark's own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Iterator, List, Optional

from batch.job import Job, JobError, Refused
from batch.report import Progress, Summary
from runtime.categorizer import ModelError

DEFAULT_MODEL = "artifacts/model.onnx"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="score.py",
        description=(
            "Adds category and confidence (the top probability) to every row of a catalogue. "
            "INPUT and OUTPUT are CSV or Parquet, by extension (.csv, .parquet); INPUT may "
            "also be a directory of Parquet parts. INPUT needs a 'title' column; "
            "'concatenated_tags' is used when present, and so are the listing fields "
            "'seller_id' (text or integers), 'price', 'weight', 'minimum_quantity' (numbers "
            "from 0 to 1,000,000) and 'express_delivery' (true/false/0/1) when the model takes "
            "them. Missing values are unknown; invalid ones are unknown too, and counted. "
            "OUTPUT keeps every input column, in input order."
        ),
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument(
        "--model",
        default=os.environ.get("MODEL_PATH") or DEFAULT_MODEL,
        help=f"the ONNX model (default: $MODEL_PATH, else {DEFAULT_MODEL})",
    )
    p.add_argument("--engine", choices=("local", "spark"), default="local", help="default: local")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 1, no OUTPUT) on a row whose title is missing or blank, or whose listing "
        "field the model takes is invalid",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="local engine: scoring processes (default: one per CPU); 1 scores in this process",
    )
    p.add_argument(
        "--master",
        help="spark engine: the Spark master (default: spark-submit's --master, else local[*])",
    )
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.processes < 0:
        parser().error("--processes must be 0 (one per CPU) or more")
    job = Job(args.input, args.output, args.model, args.strict, args.processes, args.master)
    progress = Progress()
    try:
        with _stopped_by_sigterm():
            summary = _run(job, args.engine, progress)
    except (JobError, ModelError) as exc:
        return _fail(str(exc), 2)
    except Refused as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:  # the with blocks have removed the partial OUTPUT
        return _fail("stopped (Ctrl-C); OUTPUT was not written", 130)
    finally:
        progress.close()
    print(summary.line(job.output))
    return 0


def _run(job: Job, engine: str, progress: Progress) -> Summary:
    job.refuse_input_as_output()
    if engine == "spark":
        from batch import spark  # pyspark is imported only when it is used

        return spark.run(job)
    from batch import local

    return local.run(job, progress)


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `timeout`) ends the job as Ctrl-C does: by an
    exception, so that the `with` blocks remove the partial OUTPUT. Python's default
    would end the process where it stands and leave it."""

    def stop(signum: int, frame: Optional[FrameType]) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
