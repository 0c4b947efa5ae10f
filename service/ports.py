"""Whether another server already listens on the service's port.

The workers of one service share their port through SO_REUSEPORT, and the kernel would
let any other process of the same user join them just as silently: a stale server left
running after a retrain would then answer part of the traffic with the old model. So
before its workers bind, the service binds the port once *without* SO_REUSEPORT, which
fails while anyone listens there. (Two services started in the same instant can both
pass; the check is for the stale one.)
"""

from __future__ import annotations

import socket
from typing import Optional


def taken(host: str, port: int) -> Optional[str]:
    """None when nothing listens on host:port; else the one-line reason to stop."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    for family, kind, proto, _, address in addresses:  # "localhost": ::1 and 127.0.0.1
        with socket.socket(family, kind, proto) as probe:
            # SO_REUSEADDR: an earlier run's connections in TIME_WAIT do not count, a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return f"cannot listen on {host}:{port}: {exc.strerror} (is another server running there?)"
    return None
