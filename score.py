"""Scores a catalogue file: `python score.py INPUT OUTPUT` (see batch/cli.py, or --help)."""

import sys

from batch.cli import main

if __name__ == "__main__":
    sys.exit(main())
