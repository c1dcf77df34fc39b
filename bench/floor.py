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


def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/chat", data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:g} s")


def _wrk(wrk: str, script: str, url: str, seconds: int) -> int:
    out = subprocess.run(
        [wrk, "-t1", "-c64", f"-d{seconds}s", "-s", script, url], capture_output=True, text=True, timeout=seconds + 30
    ).stdout
    match = re.search(r"(\d+) requests in", out)
    if match is None:
        raise RuntimeError(f"wrk printed no count: {out[-300:]}")
    return int(match.group(1))


def measure(children: Children, variant: str, upstream_url: str, wrk: str, script: str, seconds: int) -> float:
    """CPU milliseconds per request of one variant's server process."""
    port = free_port()
    argv = [sys.executable, os.path.join(HERE, "floor_server.py"), str(port), variant, upstream_url]
    child = children._spawn(f"floor-{variant}", argv, dict(os.environ))
    try:
        _wait_listening(port)
        url = f"http://127.0.0.1:{port}/api/chat"
        _wrk(wrk, script, url, 1)  # warm-up
        before = cpu_seconds(child.pid)
        count = _wrk(wrk, script, url, seconds)
        used = cpu_seconds(child.pid) - before
    finally:
        children.stop(child)
    return 1000.0 * used / max(count, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seconds a variant instead of 6")
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
        print("the floor: CPU per request of a bare server with no proxy logic (wrk c64, keep-alive, nginx upstream)")
        print(f"load average {os.getloadavg()[0]:.2f} at start; {seconds} s a variant")
        for variant, what in VARIANTS:
            ms = measure(children, variant, upstream_url, wrk, script, seconds)
            print(f"  {variant:<11} {ms:6.3f} ms  {what}")
    finally:
        children.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
