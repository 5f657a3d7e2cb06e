"""NOOP echo service that RADICAL-Pilot starts as a service task (benchmarks/rp_services.py).

It binds a ZeroMQ REP socket on a free loopback port and prints that address as one line on
stdout: RP's service wrapper reads the line through the task's `info_pattern` and only then
reports the service as up. Every request is answered with its own bytes, so a round trip
measures the transport, not the service.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import zmq


def main() -> int:
    """Serve until SIGTERM/SIGINT; the address line is flushed since stdout is a file."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    address = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    stop = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(address, flush=True)

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop:
        if poller.poll(200):  # a timeout so that a signal is seen within 0.2 s
            sock.send(sock.recv())
    sock.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
