"""Benchmark ollama-proxy against an upstream that costs almost nothing.

Run from the repository root::

    python bench/bench.py            # full run (a few minutes on 2 cores)
    python bench/bench.py --quick    # a fast run (well under a minute)

Processes, all on 127.0.0.1: the upstream (nginx serving canned OpenAI answers, see
``bench/upstreams.py``; the test suite's simulator when nginx is not installed), the
proxy as deployed (``twistd -n ollama-proxy --config FILE``) and this load client
(``wrk`` too for the worker-scaling table, when installed). Printed as one table:

1. CPU per non-streamed request (``/api/chat`` and ``/v1/chat/completions``) and the
   latency the proxy adds (p50, p99) at concurrency 1 and 64, through this client; at
   concurrency 1 through wrk as well (when installed), the instrument issue #11's
   figures were taken with;
2. CPU per relayed token of a 2,000-chunk stream;
3. requests/s at concurrency 64 with keep-alive clients, 1 worker against N;
4. resident memory of the proxy (every process) with 10,000 streams open, and whether
   every upstream stream was closed within a second of its client leaving.

Every loop is bounded; a watchdog ends a run that hangs; the children are stopped
whatever happens. No number here is asserted anywhere: this is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from loadclient import LatencyResult, LoadClient  # noqa: E402
from processes import (  # noqa: E402
    Child,
    Children,
    free_port,
    raise_fd_limit,
    read_line,
    tree,
    tree_cpu_seconds,
    tree_pss_kib,
    tree_rss_kib,
)
from report import render  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from upstreams import NginxUpstream, Roles, SimulatorUpstream, nginx_binary  # noqa: E402

from tests.simulator import API_KEY  # noqa: E402

CONCURRENCIES = (1, 64)
ENDPOINTS = ("/api/chat", "/v1/chat/completions")


@dataclass(frozen=True)
class Plan:
    """How much work a run does; every loop of the benchmark is bounded by it."""

    name: str
    requests_c1: int  # non-streamed requests at concurrency 1
    per_worker_c64: int  # non-streamed requests per client at concurrency 64
    warmup: int  # requests per target before each latency run, not counted
    stream_runs: int
    scaling_seconds: float  # per worker count, with wrk
    wrk_c1_seconds: float  # per target, with wrk at concurrency 1 (after a 1 s warm-up)
    streams_held: int
    hold_seconds: float
    deadline: float  # the watchdog: the whole run ends after this many seconds

    def requests(self, concurrency: int) -> int:
        return self.requests_c1 if concurrency == 1 else self.per_worker_c64 * concurrency


FULL = Plan("full", 2000, 60, 200, 5, 10.0, 5.0, 10000, 5.0, 1500.0)
QUICK = Plan("quick", 200, 5, 50, 2, 2.0, 1.0, 200, 1.0, 240.0)


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run printed (its ``done`` hook): latencies in microseconds."""

    requests: int
    duration_us: int
    errors: int
    p50_us: int
    p99_us: int

    @property
    def rate(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else float("nan")


@dataclass
class Results:
    """Everything measured, for the table."""

    upstream: str = ""
    latency: dict[tuple[int, str], LatencyResult] = field(default_factory=dict)
    wrk_c1: dict[str, WrkResult] = field(default_factory=dict)  # target -> wrk's run at concurrency 1
    cpu_per_request: dict[tuple[int, str], float] = field(default_factory=dict)
    stream_tokens: int = 0
    stream_seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu_per_token: float = 0.0
    scaling: dict[int, float] = field(default_factory=dict)  # workers -> requests/s
    scaling_tool: str = ""
    workers_held: int = 1
    rss: dict[str, int] = field(default_factory=dict)  # KiB, the proxy's processes together
    pss: dict[str, int] = field(default_factory=dict)  # KiB, shared pages counted once
    held: int = 0
    open_seconds: float = 0.0
    upstream_open_while_held: int = 0
    upstream_left: int = -1
    left_seconds: float = 0.0  # the holder's loop closing every client
    close_seconds: float = 0.0  # from the first client's close to nginx's last upstream gone
    close_poll: float = 0.0  # how long before that nginx was last seen with one still open
    close_each: list[float] = field(default_factory=list)  # each upstream's end, from the first client's close
    notes: list[str] = field(default_factory=list)


def chat_body(model: str, content: str, stream: bool) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}).encode()


class Bench:
    """The measurements, run in the load client's reactor."""

    def __init__(self, reactor: Any, plan: Plan, upstream: Any, children: Children, config: str, workers: int) -> None:
        self.reactor = reactor
        self.plan = plan
        self.upstream = upstream
        self.roles: Roles = upstream.roles()
        self.children = children
        self.config = config
        self.workers = workers
        self.client = LoadClient(reactor, max_connections=max(CONCURRENCIES))
        self.results = Results(upstream=upstream.name)
        self.proxy: Child | None = None
        self.proxy_url = ""
        self.headers = {"Content-Type": "application/json"}

    def sleep(self, seconds: float) -> Deferred[None]:
        return task.deferLater(self.reactor, seconds, lambda: None)

    async def start_proxy(self, workers: int | None) -> None:
        if self.proxy is not None:
            await self.client.close()
            self.children.stop(self.proxy)
        port = free_port()
        self.proxy = self.children.start_proxy(port, self.config, workers, name=f"proxy-w{workers or 1}")
        self.proxy_url = f"http://127.0.0.1:{port}"
        await self.wait_ready(workers or 1)

    async def wait_ready(self, workers: int, timeout: float = 60.0) -> None:
        """Until the proxy answers with every model, and has all its workers."""
        assert self.proxy is not None
        deadline = time.monotonic() + timeout
        wanted = {
            f"{self.roles.chat_model}:latest",
            f"{self.roles.long_model}:latest",
            f"{self.roles.slow_model}:latest",
        }
        while True:
            self.proxy.check_alive()
            try:
                code, _ = await self.client.request_within(1.0, "GET", self.proxy_url + "/api/version")
                if code == 200:
                    tags = await self.client.get_json(self.proxy_url + "/api/tags")
                    names = {m.get("name") for m in tags.get("models", [])}
                    if wanted <= names and len(tree(self.proxy.pid)) >= (workers + 1 if workers > 1 else 1):
                        return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the proxy was not ready within {timeout:g}s (see its log)")
            await self.sleep(0.1)

    async def run(self, memory_only: bool = False, requests_only: bool = False) -> Results:
        try:
            if memory_only:
                await self.start_proxy(self.workers if self.workers > 1 else None)
                self.results.workers_held = self.workers
                await self.sleep(0.5)
                self.memory("idle")
            else:
                await self.start_proxy(None)
                await self.sleep(0.5)
                self.memory("idle")
                for concurrency in CONCURRENCIES:
                    await self.latency(concurrency)
                if requests_only:
                    return self.results
                await self.streaming()
                await self.scaling()
            await self.hold_streams()
            return self.results
        finally:
            await self.client.close()

    # -- 1. non-streamed ----------------------------------------------------------------
    async def latency(self, concurrency: int) -> None:
        plan, roles = self.plan, self.roles
        per_client = plan.requests(concurrency) // concurrency
        body = chat_body(roles.chat_model, "Say hello to the benchmark", False)
        targets = {"direct": (roles.direct_url, roles.direct_headers)}
        targets.update({endpoint: (self.proxy_url + endpoint, self.headers) for endpoint in ENDPOINTS})
        for target, (url, headers) in targets.items():
            warm = max(1, plan.warmup // concurrency)
            await self.client.latency_run(url, body, headers, roles.expect, concurrency, warm)
            assert self.proxy is not None
            cpu_before = tree_cpu_seconds(self.proxy.pid)
            result = await self.client.latency_run(url, body, headers, roles.expect, concurrency, per_client)
            if target != "direct":
                count = max(1, len(result.latencies) + result.errors)
                self.results.cpu_per_request[(concurrency, target)] = (
                    tree_cpu_seconds(self.proxy.pid) - cpu_before
                ) / count
            if result.errors:
                self.results.notes.append(f"{result.errors} failed {target} requests at concurrency {concurrency}")
            if not result.latencies:
                raise RuntimeError(f"every {target} request failed at concurrency {concurrency}")
            self.results.latency[(concurrency, target)] = result
        wrk = shutil.which("wrk")
        if concurrency == 1 and wrk:
            # The same requests through wrk, one connection: a client in C that answers at
            # once, so that what it adds to a round trip is not the proxy's (this client is
            # Python sharing the two cores; see the README on the c1 row).
            for target, (url, headers) in targets.items():
                self.results.wrk_c1[target] = await self.wrk_run(wrk, url, body, headers, 1, plan.wrk_c1_seconds)

    # -- 2. one long stream -----------------------------------------------------------------
    async def streaming(self) -> None:
        plan, roles = self.plan, self.roles
        self.results.stream_tokens = roles.long_tokens
        targets = {
            "direct": (roles.direct_long_url, roles.direct_headers, b"data: ", b"data: [DONE]", True),
            "proxy": (self.proxy_url + "/api/chat", self.headers, b"\n", b'"done":true', False),
        }
        assert self.proxy is not None
        for target, (url, headers, marker, end, openai) in targets.items():
            body = chat_body(roles.long_model, roles.long_prompt, True)
            if openai:
                body = body[:-1] + b', "stream_options": {"include_usage": true}}'
            seconds: list[float] = []
            cpu_before = 0.0
            for run in range(plan.stream_runs + 1):  # run 0 warms up
                if run == 1:
                    cpu_before = tree_cpu_seconds(self.proxy.pid)
                started = time.perf_counter()
                counter = await self.client.open_stream(url, body, headers, marker)
                await counter.finished
                assert counter.ended_at is not None
                if not counter.clean or end not in counter.tail or counter.events < roles.long_tokens:
                    raise RuntimeError(
                        f"{target} stream incomplete: {counter.events} events, ends {counter.tail[-120:]!r}"
                    )
                if run:
                    seconds.append(counter.ended_at - started)
            self.results.stream_seconds[target] = seconds
            if target == "proxy":
                self.results.cpu_per_token = (tree_cpu_seconds(self.proxy.pid) - cpu_before) / (
                    roles.long_tokens * plan.stream_runs
                )

    # -- 3. worker scaling -----------------------------------------------------------------
    async def scaling(self) -> None:
        """Requests/s at c64 over keep-alive connections, 1 worker, then ``self.workers``."""
        counts = [1] if self.workers <= 1 else [1, self.workers]
        for workers in counts:
            if workers > 1 or self.results.scaling:
                await self.start_proxy(workers)
            rate = await self.throughput()
            self.results.scaling[workers] = rate
        self.results.workers_held = counts[-1]

    async def throughput(self) -> float:
        url = self.proxy_url + "/api/chat"
        body = chat_body(self.roles.chat_model, "Say hello to the benchmark", False)
        wrk = shutil.which("wrk")
        if wrk:
            self.results.scaling_tool = "wrk (1 thread, 64 keep-alive connections)"
            return await self.wrk(wrk, url, body)
        self.results.scaling_tool = "this client (64 keep-alive connections; the client may be the bound)"
        await self.client.latency_run(url, body, self.headers, self.roles.expect, 64, 5)
        result = await self.client.latency_run(url, body, self.headers, self.roles.expect, 64, self.plan.per_worker_c64)
        return result.rate

    async def wrk(self, wrk: str, url: str, body: bytes) -> float:
        result = await self.wrk_run(wrk, url, body, self.headers, 64, self.plan.scaling_seconds)
        return result.rate

    async def wrk_run(
        self, wrk: str, url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
    ) -> WrkResult:
        """POST ``body`` to ``url`` over ``connections`` keep-alive connections for ``seconds``
        (after a one-second warm-up run); errors are noted."""
        script = os.path.join(self.children.workdir, "post.lua")
        with open(script, "w", encoding="utf-8") as f:
            f.write('wrk.method = "POST"\n')
            for name, value in headers.items():
                f.write(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n")
            f.write(
                f"wrk.body = [[{body.decode()}]]\n"
                "done = function(summary, latency, requests)\n"
                '  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,'
                " summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write"
                " + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))\nend\n"
            )
        result: WrkResult | None = None
        for run_seconds in (1.0, seconds):  # the first run warms up
            argv = [wrk, "-t1", f"-c{connections}", f"-d{run_seconds:g}s", "-s", script, url]
            process = await _run(self.reactor, argv, timeout=run_seconds + 30)
            line = next((x for x in process.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"wrk printed no result: {process[-500:]}")
            result = WrkResult(*(int(float(x)) for x in line.split()[1:]))
            if result.errors:
                self.results.notes.append(f"wrk: {result.errors} errors in {result.requests} requests to {url}")
        assert result is not None
        return result

    def memory(self, key: str, peak: bool = False) -> None:
        assert self.proxy is not None
        rss, pss = tree_rss_kib(self.proxy.pid), tree_pss_kib(self.proxy.pid)
        if peak:
            rss, pss = max(rss, self.results.rss.get(key, 0)), max(pss, self.results.pss.get(key, 0))
        self.results.rss[key], self.results.pss[key] = rss, pss

    # -- 4. memory with many streams open --------------------------------------------------
    async def hold_streams(self) -> None:
        """Streams held by ``bench/holder.py`` (raw sockets in a process of its own), then
        all its clients leave in one loop; the holder times when nginx's last upstream
        connection is gone, nginx's log when each one went."""
        plan, results = self.plan, self.results
        assert self.proxy is not None
        count = plan.streams_held
        results.held = count
        await self.sleep(0.5)
        self.memory("before streams")
        body_file = os.path.join(self.children.workdir, "hold.json")
        with open(body_file, "wb") as f:
            f.write(chat_body(self.roles.slow_model, "hold me", True))
        port, path = self.upstream.status_endpoint()
        holder = self.children.start_holder(
            [
                "--port",
                self.proxy_url.rsplit(":", 1)[1],
                "--body-file",
                body_file,
                "--count",
                str(count),
                "--status-port",
                str(port),
                "--status-path",
                path,
                "--deadline",
                str(plan.deadline),
            ]
        )
        try:
            opened = await self.holder_says(holder, timeout=300.0)
            results.open_seconds = opened["seconds"]
            results.upstream_open_while_held = opened["upstream"]
            for _ in range(max(1, round(plan.hold_seconds / 0.25))):
                await self.sleep(0.25)
                self.memory("streams open (peak)", peak=True)
            assert holder.process.stdin is not None
            holder.process.stdin.write(b"close\n")
            holder.process.stdin.flush()
            closed = await self.holder_says(holder, timeout=120.0)
        finally:
            self.children.stop(holder)
        if closed["ended"]:
            raise RuntimeError(f"{closed['ended']} of the held streams ended by themselves")
        results.upstream_left = closed["left"]
        results.left_seconds = closed["left_until"] - closed["left_from"]
        results.close_seconds = closed["upstream_gone"] - closed["left_from"]
        results.close_poll = closed["upstream_gone"] - closed["polled_before"]
        await self.sleep(2.0)  # nginx writes its log within a second
        results.close_each = [t - closed["left_from"] for t in self.upstream.held_closes(closed["left_from"] - 1.0)]
        self.memory("after streams closed")

    async def holder_says(self, holder: Child, timeout: float) -> dict[str, Any]:
        """The holder's next line (off the reactor thread); its error, raised."""
        from twisted.internet.threads import deferToThread

        assert holder.process.stdout is not None
        line = await deferToThread(read_line, holder.process.stdout, timeout)
        if not line:
            holder.check_alive()
            raise RuntimeError(f"the holder said nothing within {timeout:g} s")
        said: dict[str, Any] = json.loads(line)
        if "error" in said:
            raise RuntimeError(f"holder: {said['error']}")
        return said


async def _run(reactor: Any, argv: list[str], timeout: float) -> str:
    """Run a command off the reactor thread; its stdout."""
    from twisted.internet.threads import deferToThread

    def call() -> str:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False).stdout

    return await deferToThread(call)


# -- the driver -----------------------------------------------------------------------------
class Interrupted(Exception):
    """The reactor was stopped (by a signal) before the run finished."""


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt()


def _supports_workers() -> bool:
    from ollama_proxy.tap import Options

    return any(o[0] == "workers" for o in getattr(Options, "optParameters", []))


def start_upstream(children: Children, choice: str, streams: int) -> Any:
    binary = nginx_binary()
    if choice == "nginx" and binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    if choice != "simulator" and binary is not None:
        upstream = NginxUpstream(children.workdir, free_port(), streams)
        nginx = children.start_nginx(upstream.argv(binary))
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            nginx.check_alive()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", upstream.port)) == 0:
                    return upstream
            time.sleep(0.05)
        raise RuntimeError("nginx did not listen within 10s")
    _, url = children.start_simulator(0.25)
    return SimulatorUpstream(url, API_KEY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark ollama-proxy against a canned upstream.")
    parser.add_argument("--quick", action="store_true", help="a fast run with fewer requests and streams")
    parser.add_argument("--streams", type=int, default=None, help="streams held open for the memory measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N for the scaling table")
    parser.add_argument("--upstream", choices=("auto", "nginx", "simulator"), default="auto")
    parser.add_argument("--memory-only", action="store_true", help="only section 4 (streams held, then left)")
    parser.add_argument("--requests-only", action="store_true", help="only section 1 (non-streamed requests)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the children's logs and print where")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.streams is not None:
        plan = Plan(**{**plan.__dict__, "streams_held": max(1, args.streams)})
    fds = raise_fd_limit(3 * plan.streams_held + 4096)
    signal.signal(signal.SIGTERM, _terminate)
    workers = args.workers if _supports_workers() else 1

    from twisted.internet import reactor

    load = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix="ollama-proxy-bench-")
    children = Children(workdir)
    outcome: dict[str, Any] = {}
    bench: Bench | None = None
    try:
        upstream = start_upstream(children, args.upstream, plan.streams_held)
        config = os.path.join(workdir, "proxy.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                f"[log]\naccess = true\n[limits]\nmax_connections = {plan.streams_held + 1024}\n\n"
                + upstream.proxy_config(plan.streams_held)
            )
        bench = Bench(reactor, plan, upstream, children, config, workers)
        reactor.suggestThreadPoolSize(2)

        def finished(result: Any) -> None:
            outcome.setdefault("result", result)
            if reactor.running:
                reactor.stop()

        def start() -> None:
            d = Deferred.fromCoroutine(bench.run(args.memory_only, args.requests_only))  # type: ignore[union-attr]
            d.addErrback(lambda failure: failure.value)
            d.addCallback(finished)

        timer = reactor.callLater(
            plan.deadline, lambda: finished(RuntimeError(f"the run did not finish within {plan.deadline:g}s"))
        )
        reactor.callWhenRunning(start)
        reactor.addSystemEventTrigger("before", "shutdown", lambda: outcome.setdefault("result", Interrupted()))
        reactor.run()
        if timer.active():
            timer.cancel()
    except KeyboardInterrupt:
        outcome.setdefault("result", Interrupted())
    except BaseException as error:  # noqa: BLE001 - report it after the children are gone
        outcome.setdefault("result", error)
    finally:
        children.stop_all()

    result = outcome.get("result")
    if isinstance(result, Results):
        print(render(plan, result, load, fds, ENDPOINTS, CONCURRENCIES))
        if args.keep_logs:
            print(f"logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    if isinstance(result, Interrupted):
        print("interrupted: the children were stopped", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 130
    print("benchmark failed: " + "".join(traceback.format_exception(result)).rstrip(), file=sys.stderr)
    for child in children.children:
        print(f"--- last lines of {child.name} log ({child.log_path}) ---\n{child.log_tail()}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
