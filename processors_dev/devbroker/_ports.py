"""Free TCP ports for broker listeners.

Ports come from below the kernel's ephemeral range when there is room there, so an outgoing
client connection cannot take a broker's port between the pick and the broker's bind (nor while
a broker is paused and its port is waiting to be bound again).  Each candidate is checked by
binding it, and ports this process already handed out are never handed out twice.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

__all__ = ["pick_free_ports"]

_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000
#: Ports that other local Kafka set-ups conventionally use; never picked even when free.
_CONVENTIONAL_KAFKA_PORTS = frozenset({9092, 9093, 9094, 19092, 19093, 19094, 29092, 29093, 29094})
_MAX_TRIES = 500

_handed_out: set[int] = set()
_lock = threading.Lock()


def _candidate_range() -> tuple[int, int] | None:
    """The inclusive range to draw from, or ``None`` to let the kernel choose (port 0)."""
    try:
        low = int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if low - _LOWEST_PORT < 1000:
        return None
    return _LOWEST_PORT, low - 1


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _kernel_pick(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def pick_free_ports(count: int, *, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct ports that are free on ``host`` right now."""
    span = _candidate_range()
    picked: list[int] = []
    with _lock:
        for _ in range(_MAX_TRIES):
            if len(picked) == count:
                break
            port = random.randint(*span) if span is not None else _kernel_pick(host)
            if port in _handed_out or port in _CONVENTIONAL_KAFKA_PORTS or port in picked:
                continue
            if _bindable(host, port):
                picked.append(port)
        if len(picked) < count:
            raise OSError(f"found only {len(picked)} of {count} free ports on {host}")
        _handed_out.update(picked)
    return picked
