"""Entry point: `python api.py` serves the categorizer API (settings from the environment).

WORKERS=1 serves in this process; more start a supervisor and that many worker
processes sharing PORT (see service/supervisor.py). Exit codes: 0 after a graceful
stop, 2 bad settings, 3 unusable model, port or metrics directory, 1 a worker died.
"""

from __future__ import annotations

import os
import sys

from service.settings import METRICS_DIR_VARIABLE, Settings, SettingsError
from service.signals import defer_stop_signals

EXIT_BAD_SETTINGS = 2


def main() -> int:
    defer_stop_signals()  # until a handler can drain; see service/signals.py
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    # Imported after the settings check: a typo in the environment fails fast.
    from service.ports import taken
    from service.supervisor import EXIT_STARTUP, Supervisor

    reason = taken(settings.host, settings.port)
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_STARTUP

    if settings.workers > 1:
        return Supervisor(settings).run()
    # One process: its own in-memory metrics are exact, and no file is needed (this must
    # happen before prometheus_client is imported, which reads the variable).
    os.environ.pop(METRICS_DIR_VARIABLE, None)
    from service.logs import configure
    from service.server import StartupError, run_worker

    configure(settings.log_level)
    try:
        run_worker(settings)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


if __name__ == "__main__":
    sys.exit(main())
