"""Run the test suite's UpstreamSimulator as a process of its own, for the benchmark.

Prints its base URL (``http://127.0.0.1:PORT/api/v1``) as the first line on stdout,
then serves until SIGTERM/SIGINT. ``GET /_bench/stats`` answers the simulator's
counters as JSON, so the benchmark can check from outside that the proxy closed
every upstream stream its clients abandoned.

Usage: ``python bench/run_simulator.py [--slow-interval SECONDS]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from twisted.internet import reactor, task  # noqa: E402 - a script: the reactor is ours
from twisted.web.resource import Resource  # noqa: E402

from tests.simulator import UpstreamSimulator  # noqa: E402


class StatsResource(Resource):
    """``GET /_bench/stats``: the simulator's counters."""

    isLeaf = True

    def __init__(self, simulator: UpstreamSimulator) -> None:
        super().__init__()
        self.simulator = simulator

    def render_GET(self, request: Any) -> bytes:
        sim = self.simulator
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "connections_opened": sim.connections_opened,
                "connections_closed": sim.connections_closed,
                "open_connections": len(sim.open_protocols),
                "streams_started": sim.streams_started,
                "streams_aborted": sim.streams_aborted,
                "tokens_sent": sim.tokens_sent,
                "pid": os.getpid(),
            }
        ).encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--slow-interval", type=float, default=0.02, help="seconds between tokens of sim/slow and sim/endless"
    )
    args = parser.parse_args(argv)

    sim = UpstreamSimulator(reactor, slow_interval=args.slow_interval)
    url = sim.start()
    sim.site.resource.putChild(b"_bench", Resource())
    sim.site.resource.children[b"_bench"].putChild(b"stats", StatsResource(sim))
    # The simulator records every request for the tests; a benchmark sends thousands.
    forget = task.LoopingCall(sim.requests.clear)
    forget.start(1.0, now=False)
    sim.site.noisy = False

    sys.stdout.write(url + "\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
