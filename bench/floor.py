"""The floor: what the parts the proxy is built from cost, with no proxy logic at all.

Run from the repository root (needs nginx and wrk)::

    python bench/floor.py            # about a minute
    python bench/floor.py --quick    # about 20 seconds

For each variant of ``bench/floor_server.py`` (a ``twisted.web`` resource or a Klein
route, answering from memory or relaying one upstream answer through the proxy's lean
client, Twisted's Agent or treq), wrk sends non-streamed POSTs over 64 keep-alive
connections to it for a while, against the same nginx upstream as ``bench/bench.py``
(``/json/v1/chat/completions``: one canned JSON answer), and the server process's CPU
time per answered request is printed. A proxy's own CPU per request can only be read
against these numbers: they are what Twisted on CPython costs before any work is done.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from processes import Children, cpu_seconds, free_port  # noqa: E402
from upstreams import NginxUpstream, nginx_binary  # noqa: E402

VARIANTS = [
    ("web+none", "twisted.web resource, answer from memory"),
    ("klein+none", "Klein route, answer from memory"),
    ("web+lean", "twisted.web + the proxy's HTTP/1.1 client (providers/http1.py)"),
    ("klein+lean", "Klein + the proxy's HTTP/1.1 client"),
    ("web+agent", "twisted.web + twisted.web.client.Agent"),
    ("web+treq", "twisted.web + treq over that Agent"),
    ("klein+treq", "Klein + treq"),
]


def _wait_listening(port: int, timeout: float = 20.0, url: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url or f"http://127.0.0.1:{port}/api/chat", data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:g} s")


def _wrk(wrk: str, script: str, url: str, seconds: int, connections: int) -> tuple[int, float]:
    """Requests answered and their p50 latency in milliseconds."""
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    match = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    if match is None or p50 is None:
        raise RuntimeError(f"wrk printed no count: {out[-300:]}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return int(match.group(1)), float(p50.group(1)) * scale


def measure(
    children: Children, variant: str, upstream_url: str, wrk: str, script: str, seconds: int, connections: int
) -> tuple[float, float]:
    """CPU milliseconds per request of one variant's server process, and the p50 latency wrk saw."""
    port = free_port()
    argv = [sys.executable, os.path.join(HERE, "floor_server.py"), str(port), variant, upstream_url]
    child = children._spawn(f"floor-{variant}", argv, dict(os.environ))
    try:
        _wait_listening(port)
        url = f"http://127.0.0.1:{port}/api/chat"
        _wrk(wrk, script, url, 1, connections)  # warm-up
        before = cpu_seconds(child.pid)
        count, p50 = _wrk(wrk, script, url, seconds, connections)
        used = cpu_seconds(child.pid) - before
    finally:
        children.stop(child)
    return 1000.0 * used / max(count, 1), p50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seconds a variant instead of 6")
    parser.add_argument(
        "--connections", type=int, default=64, help="wrk's keep-alive connections (1 shows the latency floor)"
    )
    args = parser.parse_args(argv)
    nginx, wrk = nginx_binary(), shutil.which("wrk")
    if not nginx or not wrk:
        print("bench/floor.py needs nginx and wrk; skipped")
        return 0
    seconds = 2 if args.quick else 6
    workdir = tempfile.mkdtemp(prefix="ollama-proxy-floor-")
    children = Children(workdir)
    try:
        upstream = NginxUpstream(workdir, free_port(), 100)
        children.start_nginx(upstream.argv(nginx))
        upstream_url = upstream.url + "/json/v1/chat/completions"
        script = os.path.join(workdir, "post.lua")
        with open(script, "w", encoding="utf-8") as f:
            f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = "{}"\n')
        c = args.connections
        print(f"the floor: CPU per request of a bare server with no proxy logic (wrk c{c}, keep-alive, nginx upstream)")
        print(f"load average {os.getloadavg()[0]:.2f} at start; {seconds} s a variant")
        _wait_listening(upstream.port, url=upstream_url)
        _wrk(wrk, script, upstream_url, 1, c)
        direct = _wrk(wrk, script, upstream_url, seconds, c)[1]
        print(f"  {'direct':<11} {'':>6}     p50 {direct:6.3f} ms  wrk straight to nginx")
        for variant, what in VARIANTS:
            ms, p50 = measure(children, variant, upstream_url, wrk, script, seconds, c)
            print(f"  {variant:<11} {ms:6.3f} ms  p50 {p50:6.3f} ms (+{p50 - direct:.3f})  {what}")
    finally:
        children.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
