"""Stop signals (SIGTERM, SIGINT) are held back until a process can drain.

A stop requested while the service is still starting (importing, loading the model)
must be a graceful stop, not a kill by the default action. `api.py`, and each spawned
worker, block the stop signals first thing (a spawned process does not inherit the
mask); a signal sent meanwhile waits, pending, until that process has installed its
handlers and calls `accept_stop_signals`. The supervisor signals a worker only once
it has said it blocks them (see service/supervisor.py).
"""

from __future__ import annotations

import signal

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def defer_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def accept_stop_signals() -> None:
    """Call once the handlers are in place: a signal that waited is delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
