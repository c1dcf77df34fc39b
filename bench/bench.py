"""Benchmark ollama-proxy against its upstream simulator, side by side with the upstream.

Run from the repository root::

    python bench/bench.py            # full run (about 30 seconds on 2 cores)
    python bench/bench.py --quick    # a fast run (under 10 seconds)

Three processes, all on 127.0.0.1: the upstream simulator (``bench/run_simulator.py``,
the test suite's UpstreamSimulator), the proxy as deployed (``twistd -n ollama-proxy``
pointed at the simulator through ``OPENROUTER_BASE_URL``) and this load client.
Measured, and printed as one table:

1. non-streamed chat latency p50/p99 at concurrency 1 and 64: the proxy's ``/api/chat``
   (``stream: false``) against the simulator's ``/api/v1/chat/completions`` called directly;
2. streamed tokens per second: one long answer through the proxy against the same
   answer read directly as SSE;
3. the proxy's resident memory idle, with hundreds of streams held open, and after
   they closed, plus a check that the proxy closed every upstream stream.

Every loop is bounded; a watchdog ends a run that hangs; the children are stopped
whatever happens. No number here is asserted anywhere: this is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from loadclient import EventCounter, LatencyResult, LoadClient  # noqa: E402
from processes import Child, Children, cpu_seconds, free_port, rss_kib  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults  # noqa: E402

import twisted  # noqa: E402
from tests.simulator import API_KEY  # noqa: E402

MODEL = "google/gemini-pro"
PROMPT = "Say hello to the benchmark"
CONCURRENCIES = (1, 64)


@dataclass(frozen=True)
class Plan:
    """How much work a run does; every loop of the benchmark is bounded by it."""

    name: str
    requests_c1: int  # non-streamed requests at concurrency 1
    per_worker_c64: int  # non-streamed requests per worker at concurrency 64
    warmup: int  # requests per target before each latency run, not counted
    stream_words: int  # length of the long streamed answer, in words
    stream_runs: int
    streams_held: int
    hold_seconds: float
    slow_interval: float  # seconds between two tokens of a held (sim/endless) stream
    deadline: float  # the watchdog: the whole run ends after this many seconds

    def requests(self, concurrency: int) -> int:
        return self.requests_c1 if concurrency == 1 else self.per_worker_c64 * concurrency


FULL = Plan("full", 2000, 60, 200, 20000, 5, 500, 5.0, 0.25, 900.0)
QUICK = Plan("quick", 200, 5, 50, 5000, 2, 100, 1.5, 0.25, 180.0)


@dataclass
class Results:
    """Everything measured, for the table."""

    latency: dict[tuple[int, str], LatencyResult] = field(default_factory=dict)
    cpu_per_request: dict[int, float] = field(default_factory=dict)
    new_upstream_connections: dict[int, int] = field(default_factory=dict)
    stream_tokens: int = 0
    stream_seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu_per_token: float = 0.0
    rss: dict[str, int] = field(default_factory=dict)  # KiB
    simulator_rss: dict[str, int] = field(default_factory=dict)
    held: int = 0
    open_seconds: float = 0.0
    held_lines_per_second: float = 0.0
    upstream_open_while_held: int = 0
    upstream_closed: int = 0
    close_seconds: float = 0.0
    proxy_active_after: int = -1
    notes: list[str] = field(default_factory=list)


def _chat(model: str, content: str, stream: bool, openai: bool) -> bytes:
    """A chat body: OpenAI-shaped for the upstream (``openai``), else Ollama-shaped."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    if openai and stream:
        body["stream_options"] = {"include_usage": True}  # as the proxy asks upstream
    return json.dumps(body).encode()


class Bench:
    """The three measurements, run in the load client's reactor."""

    def __init__(
        self, reactor: Any, plan: Plan, proxy: Child, simulator: Child, proxy_url: str, simulator_url: str
    ) -> None:
        self.reactor = reactor
        self.plan = plan
        self.proxy = proxy
        self.simulator = simulator
        self.proxy_url = proxy_url
        self.sim_url = simulator_url
        self.sim_root = simulator_url.rsplit("/api/v1", 1)[0]
        self.client = LoadClient(reactor, max_connections=max(CONCURRENCIES))
        self.results = Results()
        self.held: list[EventCounter] = []
        self.direct_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
        self.proxy_headers = {"Content-Type": "application/json"}

    def sleep(self, seconds: float) -> Deferred[None]:
        return task.deferLater(self.reactor, seconds, lambda: None)

    async def sim_stats(self) -> dict[str, int]:
        return await self.client.get_json(self.sim_root + "/_bench/stats")

    async def proxy_active_streams(self) -> int:
        metrics = await self.client.get_json(self.proxy_url + "/metrics")
        return int(metrics["statistics"]["active_streams"])

    async def run(self) -> Results:
        try:
            await self.wait_ready()
            await self.sleep(0.5)
            self.results.rss["idle"] = rss_kib(self.proxy.pid)
            self.results.simulator_rss["idle"] = rss_kib(self.simulator.pid)
            for concurrency in CONCURRENCIES:
                await self.latency(concurrency)
            await self.streaming()
            await self.hold_streams()
            return self.results
        finally:
            for counter in self.held:
                counter.close()
            await self.client.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the proxy answers and has its model list (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            self.proxy.check_alive()
            try:
                code, _ = await self.client.request_within(1.0, "GET", self.proxy_url + "/api/version")
                if code == 200:
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not answer within {timeout:g}s (see its log)")
            await self.sleep(0.1)
        tags = await self.client.get_json(self.proxy_url + "/api/tags")
        names = [m.get("name") for m in tags.get("models", [])]
        if f"{MODEL}:latest" not in names:
            raise RuntimeError(f"the proxy does not list {MODEL}: {names}")

    # -- 1. non-streamed latency --------------------------------------------------------
    async def latency(self, concurrency: int) -> None:
        plan = self.plan
        per_worker = plan.requests(concurrency) // concurrency
        targets = {
            "direct": (self.sim_url + "/chat/completions", _chat(MODEL, PROMPT, False, True), self.direct_headers),
            "proxy": (self.proxy_url + "/api/chat", _chat(MODEL, PROMPT, False, False), self.proxy_headers),
        }
        expect = ("Echo: " + PROMPT).encode()
        for target, (url, body, headers) in targets.items():
            warm = max(1, plan.warmup // concurrency)
            await self.client.latency_run(url, body, headers, expect, concurrency, warm)
            opened_before = (await self.sim_stats())["connections_opened"]
            cpu_before = cpu_seconds(self.proxy.pid)
            result = await self.client.latency_run(url, body, headers, expect, concurrency, per_worker)
            if target == "proxy":
                count = max(1, len(result.latencies) + result.errors)
                self.results.cpu_per_request[concurrency] = (cpu_seconds(self.proxy.pid) - cpu_before) / count
                self.results.new_upstream_connections[concurrency] = (await self.sim_stats())[
                    "connections_opened"
                ] - opened_before
            if result.errors:
                self.results.notes.append(f"{result.errors} failed {target} requests at concurrency {concurrency}")
            if not result.latencies:
                raise RuntimeError(f"every {target} request failed at concurrency {concurrency}")
            self.results.latency[(concurrency, target)] = result

    # -- 2. streamed throughput ---------------------------------------------------------
    async def streaming(self) -> None:
        plan = self.plan
        content = " ".join(["token"] * plan.stream_words)
        self.results.stream_tokens = plan.stream_words + 1  # the simulator answers "Echo:" first
        targets = {
            # Direct: one SSE event per token, then the finish and usage chunks and [DONE].
            "direct": (
                self.sim_url + "/chat/completions",
                _chat(MODEL, content, True, True),
                self.direct_headers,
                b"data: ",
                b"data: [DONE]",
            ),
            # Proxy: one NDJSON line per token, then the final "done" line.
            "proxy": (
                self.proxy_url + "/api/chat",
                _chat(MODEL, content, True, False),
                self.proxy_headers,
                b"\n",
                b'"done":true',
            ),
        }
        for target, (url, body, headers, marker, end) in targets.items():
            seconds: list[float] = []
            cpu_before = 0.0
            for run in range(plan.stream_runs + 1):  # run 0 warms up
                if run == 1:
                    cpu_before = cpu_seconds(self.proxy.pid)
                started = time.perf_counter()
                counter = await self.client.open_stream(url, body, headers, marker)
                await counter.finished
                assert counter.ended_at is not None
                if not counter.clean or end not in counter.tail or counter.events < self.results.stream_tokens:
                    raise RuntimeError(
                        f"{target} stream incomplete: {counter.events} events, ends {counter.tail[-120:]!r}"
                    )
                if run:
                    seconds.append(counter.ended_at - started)
            self.results.stream_seconds[target] = seconds
            if target == "proxy":
                self.results.cpu_per_token = (cpu_seconds(self.proxy.pid) - cpu_before) / (
                    self.results.stream_tokens * plan.stream_runs
                )

    # -- 3. memory with many streams open --------------------------------------------------
    async def hold_streams(self) -> None:
        plan, results = self.plan, self.results
        count = plan.streams_held
        results.held = count
        await self.sleep(0.5)
        results.rss["before streams"] = rss_kib(self.proxy.pid)
        before = await self.sim_stats()
        started = time.perf_counter()
        body = _chat("sim/endless", "hold me", True, False)
        await self.client.open_many(count, self.proxy_url + "/api/chat", body, self.proxy_headers, b"\n", self.held)
        results.open_seconds = time.perf_counter() - started
        during = await self.sim_stats()
        results.upstream_open_while_held = (during["streams_started"] - before["streams_started"]) - (
            during["streams_aborted"] - before["streams_aborted"]
        )
        results.simulator_rss["streams open"] = rss_kib(self.simulator.pid)

        lines_before = sum(c.events for c in self.held)
        held_from = time.perf_counter()
        peak = 0
        for _ in range(max(1, round(plan.hold_seconds / 0.25))):
            await self.sleep(0.25)
            peak = max(peak, rss_kib(self.proxy.pid))
        results.held_lines_per_second = (sum(c.events for c in self.held) - lines_before) / (
            time.perf_counter() - held_from
        )
        results.rss["streams open (peak)"] = peak
        ended = [c for c in self.held if c.ended_at is not None]
        if ended:
            raise RuntimeError(f"{len(ended)} of the held streams ended by themselves")

        closing = time.perf_counter()
        for counter in self.held:
            counter.close()
        await gatherResults([c.finished for c in self.held])
        self.held = []
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            after = await self.sim_stats()
            results.upstream_closed = after["streams_aborted"] - before["streams_aborted"]
            results.proxy_active_after = await self.proxy_active_streams()
            if results.upstream_closed >= count and results.proxy_active_after == 0:
                break
            await self.sleep(0.05)
        results.close_seconds = time.perf_counter() - closing
        if results.upstream_closed < count:
            results.notes.append(f"only {results.upstream_closed} of {count} upstream streams were closed within 30s")
        await self.sleep(2.0)
        results.rss["after streams closed"] = rss_kib(self.proxy.pid)


# -- the table ------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def render(plan: Plan, results: Results, proxy: Child, simulator: Child, load: float, proxy_config: str | None) -> str:
    """The report, as printed."""
    lines: list[str] = []
    add = lines.append
    uname = platform.uname()
    add(f"ollama-proxy benchmark: {plan.name} run")
    add(
        f"machine: {os.cpu_count()} CPUs, {uname.system} {uname.release} {uname.machine}; "
        f"Python {platform.python_version()}, Twisted {twisted.__version__}; load average {load:.2f} at start"
    )
    config = f"--config {proxy_config}" if proxy_config else "default configuration"
    add(
        f"proxy: twistd -n ollama-proxy (pid {proxy.pid}, {config}); "
        f"upstream: bench/run_simulator.py (pid {simulator.pid})"
    )
    add("client: this process; everything on 127.0.0.1")
    add("")

    width = 46
    add(f"{'1. non-streamed /api/chat vs direct upstream':<{width}}{'direct':>10}{'proxy':>10}{'added':>10}")
    for concurrency in CONCURRENCIES:
        direct = results.latency[(concurrency, "direct")]
        proxied = results.latency[(concurrency, "proxy")]
        label = f"   concurrency {concurrency} ({plan.requests(concurrency)} requests)"
        for name, fraction in (("p50 ms", 0.50), ("p99 ms", 0.99)):
            d, p = direct.percentile(fraction), proxied.percentile(fraction)
            add(f"{label:<{width - 12}}{name:>12}{_ms(d):>10}{_ms(p):>10}{'+' + _ms(p - d):>10}")
            label = ""
        add(f"{'':<{width - 12}}{'requests/s':>12}{direct.rate:>10.0f}{proxied.rate:>10.0f}")
    add(
        "   proxy CPU per request: "
        + ", ".join(f"{results.cpu_per_request[c] * 1000:.2f} ms at c={c}" for c in CONCURRENCIES)
        + "; new upstream connections: "
        + ", ".join(f"{results.new_upstream_connections[c]} at c={c}" for c in CONCURRENCIES)
    )
    add("")

    direct_s = statistics.median(results.stream_seconds["direct"])
    proxy_s = statistics.median(results.stream_seconds["proxy"])
    tokens = results.stream_tokens
    add(f"{f'2. one streamed answer of {tokens} tokens':<{width}}{'direct':>10}{'proxy':>10}{'ratio':>10}")
    add(
        f"{f'   (median of {plan.stream_runs} runs)':<{width - 12}}{'tokens/s':>12}"
        f"{tokens / direct_s:>10.0f}{tokens / proxy_s:>10.0f}{direct_s / proxy_s:>10.2f}"
    )
    add(f"{'':<{width - 12}}{'seconds':>12}{direct_s:>10.3f}{proxy_s:>10.3f}")
    add(f"   proxy CPU per relayed token: {results.cpu_per_token * 1e6:.1f} µs")
    add("")

    add(f"{f'3. proxy memory, {results.held} streams held open':<{width}}{'VmRSS MiB':>10}")
    for key in ("idle", "before streams", "streams open (peak)", "after streams closed"):
        label = f"   {key}" + (f" ({plan.hold_seconds:g}s, sim/endless)" if key == "streams open (peak)" else "")
        add(f"{label:<{width}}{results.rss[key] / 1024:>10.1f}")
    per_stream = (results.rss["streams open (peak)"] - results.rss["before streams"]) / max(1, results.held)
    add(f"{'   per open stream (KiB)':<{width}}{per_stream:>10.1f}")
    add(
        f"   opened in {results.open_seconds:.2f}s; "
        f"{results.upstream_open_while_held} upstream streams open while held; "
        f"{results.held_lines_per_second:.0f} lines/s relayed while held "
        f"(a token every {plan.slow_interval:g}s per stream)"
    )
    add(
        f"   after the clients hung up: {results.upstream_closed}/{results.held} upstream streams closed by the proxy, "
        f"proxy active_streams {results.proxy_active_after}, in {results.close_seconds:.2f}s"
    )
    add(
        f"   simulator VmRSS MiB for reference: idle {results.simulator_rss['idle'] / 1024:.1f}, "
        f"streams open {results.simulator_rss['streams open'] / 1024:.1f}"
    )
    for note in results.notes:
        add(f"NOTE: {note}")
    return "\n".join(lines)


# -- the driver -----------------------------------------------------------------------------
class Interrupted(Exception):
    """The reactor was stopped (by a signal) before the run finished."""


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt()


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark ollama-proxy against its upstream simulator.")
    parser.add_argument("--quick", action="store_true", help="a fast run with fewer requests and streams")
    parser.add_argument("--streams", type=int, default=None, help="streams held open for the memory measurement")
    parser.add_argument(
        "--proxy-config",
        metavar="FILE",
        default=None,
        help="a TOML file for the proxy (default: its built-in defaults)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the proxy's and the simulator's logs and print where"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.streams is not None:
        plan = Plan(**{**plan.__dict__, "streams_held": max(1, args.streams)})
    _raise_fd_limit()
    # Until the reactor takes SIGTERM over, turn it into an exception so that the
    # children are stopped by the ``finally`` below and not only by their death signal.
    signal.signal(signal.SIGTERM, _terminate)

    from twisted.internet import reactor

    load = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="ollama-proxy-bench-")
    children = Children(workdir)
    outcome: dict[str, Any] = {}
    try:
        simulator, simulator_url = children.start_simulator(plan.slow_interval)
        port = free_port()
        proxy = children.start_proxy(simulator_url, API_KEY, port, args.proxy_config)
        bench = Bench(reactor, plan, proxy, simulator, f"http://127.0.0.1:{port}", simulator_url)

        def finished(result: Any) -> None:
            outcome.setdefault("result", result)
            if reactor.running:
                reactor.stop()

        def watchdog() -> None:
            finished(RuntimeError(f"the run did not finish within {plan.deadline:g}s"))

        def start() -> None:
            d = Deferred.fromCoroutine(bench.run())
            d.addErrback(lambda failure: failure.value)
            d.addCallback(finished)

        timer = reactor.callLater(plan.deadline, watchdog)
        reactor.callWhenRunning(start)
        # Stopping the reactor cuts every connection of the run; when that is a signal
        # (Ctrl-C, SIGTERM) say so rather than report the cut streams as the failure.
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
        print(render(plan, result, proxy, simulator, load, args.proxy_config))
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
