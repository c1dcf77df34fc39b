"""The benchmark's table, as printed."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import twisted


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _pick(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def _left(left: int) -> str:
    return f"; {left:,} still open when it gave up" if left > 0 else ""


def render(
    plan: Any,
    results: Any,
    load: tuple[float, float, float],
    fds: int,
    endpoints: tuple[str, ...],
    concurrencies: tuple[int, ...],
) -> str:
    """The report: one section per measurement, then the notes."""
    lines: list[str] = []
    add = lines.append
    uname = platform.uname()
    add(f"ollama-proxy benchmark: {plan.name} run; upstream: {results.upstream}")
    add(
        f"machine: {os.cpu_count()} CPUs, {uname.system} {uname.release} {uname.machine}; Python "
        f"{platform.python_version()}, Twisted {twisted.__version__}; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; open-file limit {fds}"
    )
    add("everything on 127.0.0.1; proxy CPU from /proc (every proxy process), client: this process")
    add("")

    if results.latency:
        _requests(add, plan, results, endpoints, concurrencies)
    if results.stream_seconds:
        _stream(add, plan, results)
    if results.scaling:
        _scaling(add, results)
    if "streams open (peak)" in results.pss:
        _memory(add, results)
    for note in results.notes:
        add(f"NOTE: {note}")
    return "\n".join(lines)


def _requests(add: Any, plan: Any, results: Any, endpoints: tuple[str, ...], concurrencies: tuple[int, ...]) -> None:
    width = 44
    add(f"{'1. non-streamed chat':<{width}}{'direct':>9}" + "".join(f"{e:>22}" for e in endpoints))
    for concurrency in concurrencies:
        direct = results.latency[(concurrency, "direct")]
        label = f"   c{concurrency} ({plan.requests(concurrency)} requests)"
        for name, fraction in (("p50 ms", 0.50), ("p99 ms", 0.99)):
            d = direct.percentile(fraction)
            cells = ""
            for endpoint in endpoints:
                p = results.latency[(concurrency, endpoint)].percentile(fraction)
                cells += f"{_ms(p) + ' (+' + _ms(p - d) + ')':>22}"
            add(f"{label:<{width - 10}}{name:>10}{_ms(d):>9}{cells}")
            label = ""
        rates = "".join(f"{results.latency[(concurrency, e)].rate:>22.0f}" for e in endpoints)
        add(f"{'':<{width - 10}}{'req/s':>10}{direct.rate:>9.0f}{rates}")
        cpu = "".join(f"{results.cpu_per_request[(concurrency, e)] * 1000:>22.3f}" for e in endpoints)
        add(f"{'':<{width - 10}}{'CPU ms/req':>10}{'':>9}{cpu}")
        if concurrency == 1 and results.wrk_c1:
            _wrk_c1(add, width, results.wrk_c1, endpoints)
    add("")


def _wrk_c1(add: Any, width: int, runs: dict[str, Any], endpoints: tuple[str, ...]) -> None:
    """The same c1 requests through wrk (a client in C, one connection)."""
    direct = runs["direct"]
    label = "   c1 through wrk (1 connection)"
    for name, attr in (("p50 ms", "p50_us"), ("p99 ms", "p99_us")):
        d = getattr(direct, attr) / 1e6
        cells = ""
        for endpoint in endpoints:
            p = getattr(runs[endpoint], attr) / 1e6
            cells += f"{_ms(p) + ' (+' + _ms(p - d) + ')':>22}"
        add(f"{label:<{width - 10}}{name:>10}{_ms(d):>9}{cells}")
        label = ""
    rates = "".join(f"{runs[e].rate:>22.0f}" for e in endpoints)
    add(f"{'':<{width - 10}}{'req/s':>10}{direct.rate:>9.0f}{rates}")


def _stream(add: Any, plan: Any, results: Any) -> None:
    tokens = results.stream_tokens
    direct_s = statistics.median(results.stream_seconds["direct"])
    proxy_s = statistics.median(results.stream_seconds["proxy"])
    add(f"2. one streamed answer of {tokens} chunks (median of {plan.stream_runs} runs), /api/chat")
    add(
        f"   direct {tokens / direct_s:,.0f} tokens/s ({direct_s:.3f} s); proxy {tokens / proxy_s:,.0f} tokens/s "
        f"({proxy_s:.3f} s); proxy CPU per relayed token: {results.cpu_per_token * 1e6:.1f} µs"
    )
    add("")


def _scaling(add: Any, results: Any) -> None:
    add(f"3. worker scaling: non-streamed /api/chat at c64, keep-alive clients; load: {results.scaling_tool}")
    one = results.scaling.get(1)
    for workers, rate in sorted(results.scaling.items()):
        ratio = f"x{rate / one:.2f}" if one else ""
        add(f"   {workers} worker{'s' if workers > 1 else ' '}  {rate:>9,.0f} requests/s  {ratio}")
    if len(results.scaling) < 2:
        add("   (one worker only: this proxy has no --workers, or the machine one CPU)")
    add("")


def _memory(add: Any, results: Any) -> None:
    held = results.held
    add(f"4. memory, {held:,} streams held open ({results.workers_held} worker(s); every proxy process together)")
    add(f"   {'':<34}{'PSS':>9}     {'RSS sum':>9}")
    for key in ("idle", "before streams", "streams open (peak)", "after streams closed"):
        if key in results.rss:
            add(f"   {key:<34}{results.pss[key] / 1024:>9.1f} MiB {results.rss[key] / 1024:>9.1f} MiB")
    per_stream = (results.pss["streams open (peak)"] - results.pss["before streams"]) / max(1, held)
    add(f"   {'per open stream (PSS)':<34}{per_stream:>9.1f} KiB")
    add(
        f"   opened in {results.open_seconds:.1f} s; {results.upstream_open_while_held:,} upstream connections open "
        "while held"
    )
    bound = results.close_seconds
    verdict = "yes" if results.upstream_left <= 0 and bound <= 1.0 else "NO"
    add(
        f"   every client left in one loop of {results.left_seconds * 1000:.0f} ms (bench/holder.py, raw sockets); "
        f"the upstream's last connection gone {bound:.2f} s after the first client left "
        f"({max(0.0, bound - results.left_seconds):.2f} s after the last; its count polled, "
        f"last seen open {results.close_poll * 1000:.0f} ms before){_left(results.upstream_left)}"
    )
    each = sorted(results.close_each)
    if each:
        add(
            f"   each upstream connection's end after the first client left (nginx's log, {len(each):,} of them): "
            f"p50 {_pick(each, 0.5):.3f} s, p99 {_pick(each, 0.99):.3f} s, max {each[-1]:.3f} s"
        )
    add(f"   every upstream closed within 1 s of its client leaving: {verdict} (bound: the first client's leaving)")
