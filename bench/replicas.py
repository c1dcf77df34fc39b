"""Beyond one machine: nginx in front of two ollama-proxy instances, on loopback.

Run from the repository root (needs nginx; wrk for the throughput part)::

    python bench/replicas.py            # about 40 seconds
    python bench/replicas.py --quick    # about 15 seconds

It starts the canned upstream (nginx, ``bench/upstreams.py``), two proxy instances
(``twistd -n ollama-proxy``, each its own process and port) and a second nginx as the
load balancer in front of them, configured as a production balancer would be for
this proxy (``bench/replicas.py`` writes the file; the essentials are below). Then:

1. the combined throughput: wrk with 64 keep-alive connections on the balancer, and
   on one instance alone for comparison;
2. a drain: clients keep sending requests through the balancer (non-streamed, and
   streams that are in flight on the instance) while instance 1 gets SIGTERM. The
   instance stops accepting, answers the requests that still reach it with 503 and
   finishes what it had started; nginx moves new requests to instance 2. The script
   counts what the clients saw: every answer must be a 200 and every stream complete.

The balancer's essentials::

    upstream ollama_proxies {
        server 127.0.0.1:PORT1 max_fails=1 fail_timeout=10s;
        server 127.0.0.1:PORT2 max_fails=1 fail_timeout=10s;
        keepalive 64;
    }
    location / {
        proxy_pass http://ollama_proxies;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;    # the client's Host (the proxy refuses DNS rebinding)
        proxy_buffering off;                 # tokens go through as they come
        proxy_read_timeout 300s;             # long generations
        # A draining instance answers 503 before doing anything, so a POST is safe to retry.
        proxy_next_upstream error timeout http_503 non_idempotent;
    }

Exit status 0 when no client saw an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from processes import Children, free_port, raise_fd_limit  # noqa: E402
from upstreams import NginxUpstream, nginx_binary  # noqa: E402

BALANCER = """\
worker_processes 1;
master_process off;
daemon off;
pid {root}/balancer.pid;
error_log {root}/balancer-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    upstream ollama_proxies {{
        server 127.0.0.1:{port1} max_fails=1 fail_timeout=10s;
        server 127.0.0.1:{port2} max_fails=1 fail_timeout=10s;
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://ollama_proxies;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_next_upstream error timeout http_503 non_idempotent;
        }}
    }}
}}
"""

CHAT = {"model": "bench-chat", "messages": [{"role": "user", "content": "hello"}], "stream": False}
STREAM = {"model": "bench-long", "messages": [{"role": "user", "content": "hello"}], "stream": True}


def _post(url: str, body: dict, timeout: float = 60.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError as error:
        return 0, str(error).encode()


def _wait_ready(url: str, models: int, child: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()  # type: ignore[attr-defined]
        try:
            with urllib.request.urlopen(url + "/api/tags", timeout=2) as response:
                if len(json.load(response)["models"]) >= models:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {timeout:g}s")


def _wrk(url: str, seconds: float, workdir: str) -> float:
    script = os.path.join(workdir, "post.lua")
    with open(script, "w", encoding="utf-8") as f:
        f.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{json.dumps(CHAT)}]]\n"
        )
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds:g}s", "-s", script, url + "/api/chat"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match or "Non-2xx" in out or "Socket errors" in out:
        print(out)
    return float(match.group(1)) if match else 0.0


class Clients:
    """Threads that keep sending requests through the balancer and count what they saw."""

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "errors": 0, "streams": 0, "streams cut": 0}
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, index: int) -> None:
        streaming = index % 2 == 1
        while not self.stop.is_set():
            code, body = _post(self.url + "/api/chat", STREAM if streaming else CHAT)
            complete = code == 200 and (b'"done":true' in body if streaming else b"help you today" in body)
            if streaming and complete and b'"error"' in body:
                complete = False
            with self.lock:
                if complete:
                    self.counts["streams" if streaming else "ok"] += 1
                else:
                    self.counts["streams cut" if streaming else "errors"] += 1
                    self.errors.append(f"{code}: {body[-200:]!r}")

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nginx in front of two ollama-proxy instances")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    binary = nginx_binary()
    if binary is None:
        print("nginx is not installed (apt-get install nginx): nothing to show", file=sys.stderr)
        return 0
    raise_fd_limit(8192)
    seconds = 3.0 if args.quick else 10.0
    workdir = tempfile.mkdtemp(prefix="ollama-proxy-replicas-")
    children = Children(workdir)
    try:
        upstream = NginxUpstream(workdir, free_port(), 100)
        children.start_nginx(upstream.argv(binary))
        config = os.path.join(workdir, "proxy.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write("[shutdown]\ndrain_timeout = 20\n[log]\naccess = false\n\n" + upstream.proxy_config(100))
        ports = [free_port(), free_port()]
        proxies = []
        for index, port in enumerate(ports):
            proxies.append(children.start_proxy(port, config, name=f"instance{index + 1}"))
        for port, proxy in zip(ports, proxies, strict=True):
            _wait_ready(f"http://127.0.0.1:{port}", 3, proxy)
        front = free_port()
        os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
        conf = os.path.join(workdir, "balancer.conf")
        with open(conf, "w", encoding="ascii") as f:
            f.write(BALANCER.format(root=workdir, port=front, port1=ports[0], port2=ports[1]))
        children.start_nginx([binary, "-p", workdir, "-c", conf, "-e", os.path.join(workdir, "balancer-error.log")])
        balancer = f"http://127.0.0.1:{front}"
        _wait_ready(balancer, 3, children.children[-1])

        print(f"nginx balancer 127.0.0.1:{front} -> ollama-proxy instances on ports {ports[0]} and {ports[1]}")
        if shutil.which("wrk"):
            one = _wrk(f"http://127.0.0.1:{ports[0]}", seconds, workdir)
            both = _wrk(balancer, seconds, workdir)
            print(f"1. throughput, non-streamed /api/chat, wrk c64 keep-alive, {seconds:g} s each:")
            print(f"   one instance directly  {one:>8,.0f} requests/s")
            print(f"   two behind nginx       {both:>8,.0f} requests/s  (x{both / one:.2f})")
        else:
            print("1. throughput: wrk is not installed (apt-get install wrk); skipped")

        with Clients(balancer, 8) as clients:
            time.sleep(seconds / 2)
            before = dict(clients.counts)
            proxies[0].process.send_signal(signal.SIGTERM)
            code = proxies[0].process.wait(60)
            time.sleep(seconds / 2)
        after = clients.counts
        print(f"2. drain: instance 1 got SIGTERM after {before['ok']} requests and {before['streams']} streams;")
        print(f"   it exited with status {code}; clients saw {after['ok']} answers and {after['streams']} complete")
        print(f"   streams in all, {after['errors']} failed requests and {after['streams cut']} cut streams")
        for error in clients.errors[:5]:
            print(f"   error: {error}")
        failed = after["errors"] + after["streams cut"]
        print("   no client saw an error" if not failed else "   CLIENTS SAW ERRORS")
        return 1 if failed or code != 0 else 0
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
