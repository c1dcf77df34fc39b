"""CPU per request with and without the usage ledger (issue #12 allows it 5 %).

Run from the repository root::

    python bench/ledger_bench.py            # 3 rounds of 2,000 requests per variant
    python bench/ledger_bench.py --quick    # 1 round of 300

The same upstream as ``bench/bench.py`` (nginx with canned answers, else the test
simulator) and the proxy as deployed (``twistd -n ollama-proxy --config FILE``).
Variants, started afresh in turn each round so drift hits them alike:

- ``no ledger``;
- ``ledger``: a ``[ledger]`` on SQLite in a temporary folder (rows batched every second);
- ``ledger + limits``: the same with ``[auth.default_limits]`` (every request is
  checked against a request limit and daily and monthly budgets it never reaches).

CPU is the proxy process's (all its threads: the database thread counts) over the
measured requests, divided by their number, at concurrency 1 and 16; the median of
the rounds is printed. Nothing is asserted: this is a measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from loadclient import LoadClient  # noqa: E402
from processes import Children, free_port, tree_cpu_seconds  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from bench import chat_body, start_upstream  # noqa: E402

CONCURRENCIES = (1, 16)
LEDGER = '[ledger]\nurl = "sqlite://{folder}/ledger-{variant}.sqlite3"\n'
LIMITS = (
    "[auth.default_limits]\nrequests_per_minute = 1000000000\n"
    "budget_per_day = 1000000000.0\nbudget_per_month = 1000000000.0\n"
)
VARIANTS = {"no ledger": "", "ledger": LEDGER, "ledger + limits": LEDGER + LIMITS}


async def measure(reactor: Any, args: Any, children: Children, upstream: Any) -> dict[tuple[str, int], list[float]]:
    """µs of proxy CPU per request, per (variant, concurrency), one value per round."""
    roles = upstream.roles()
    client = LoadClient(reactor, max_connections=max(CONCURRENCIES))
    body = chat_body(roles.chat_model, "Say hello to the benchmark", False)
    headers = {"Content-Type": "application/json"}
    results: dict[tuple[str, int], list[float]] = {}
    try:
        for _round in range(args.rounds):
            for index, (variant, extra) in enumerate(VARIANTS.items()):
                config = os.path.join(children.workdir, f"proxy-{index}.toml")
                with open(config, "w", encoding="utf-8") as f:
                    f.write(upstream.proxy_config(16) + "\n" + extra.format(folder=children.workdir, variant=index))
                port = free_port()
                proxy = children.start_proxy(port, config, name=f"proxy-{index}")
                url = f"http://127.0.0.1:{port}/api/chat"
                await wait_ready(reactor, client, f"http://127.0.0.1:{port}", roles.chat_model, proxy)
                for concurrency in CONCURRENCIES:
                    per_worker = args.requests // concurrency
                    await client.latency_run(url, body, headers, roles.expect, concurrency, max(1, 100 // concurrency))
                    before = tree_cpu_seconds(proxy.pid)
                    run = await client.latency_run(url, body, headers, roles.expect, concurrency, per_worker)
                    spent = tree_cpu_seconds(proxy.pid) - before
                    if run.errors:
                        raise RuntimeError(f"{variant}: {run.errors} failed requests at concurrency {concurrency}")
                    results.setdefault((variant, concurrency), []).append(spent / len(run.latencies) * 1e6)
                await client.close()
                children.stop(proxy)
    finally:
        await client.close()
    return results


async def wait_ready(reactor: Any, client: LoadClient, root: str, model: str, proxy: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        proxy.check_alive()
        try:
            tags = await client.get_json(root + "/api/tags")
            if any(m.get("name", "").startswith(model) for m in tags.get("models", [])):
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        await task.deferLater(reactor, 0.1, lambda: None)
    raise RuntimeError("the proxy was not ready within 60 s")


def report(results: dict[tuple[str, int], list[float]], args: Any) -> str:
    lines = [
        f"ledger benchmark: {args.rounds} round(s) of {args.requests} non-streamed /api/chat requests per variant",
        "CPU of the proxy per request in µs: median of the rounds [lowest, highest], and against 'no ledger':",
        "",
        "| variant | " + " | ".join(f"c={c}" for c in CONCURRENCIES) + " |",
        "| --- | " + " | ".join("---" for _ in CONCURRENCIES) + " |",
    ]
    base = {c: statistics.median(results[("no ledger", c)]) for c in CONCURRENCIES}
    for variant in VARIANTS:
        cells = []
        for c in CONCURRENCIES:
            values = results[(variant, c)]
            value = statistics.median(values)
            change = "" if variant == "no ledger" else f" ({(value / base[c] - 1) * 100:+.1f} %)"
            cells.append(f"{value:.0f} [{min(values):.0f}, {max(values):.0f}]{change}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU per request with and without the usage ledger.")
    parser.add_argument("--quick", action="store_true", help="one round of 300 requests")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None, help="requests per variant and concurrency")
    parser.add_argument("--upstream", choices=("auto", "nginx", "simulator"), default="auto")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (300 if args.quick else 2000)

    from twisted.internet import reactor

    workdir = tempfile.mkdtemp(prefix="ollama-proxy-ledger-bench-")
    children = Children(workdir)
    outcome: dict[str, Any] = {}
    try:
        upstream = start_upstream(children, args.upstream, 16)

        def finished(result: Any) -> None:
            outcome["result"] = result
            reactor.stop()

        def start() -> None:
            d = Deferred.fromCoroutine(measure(reactor, args, children, upstream))
            d.addErrback(lambda failure: failure.value)
            d.addCallback(finished)

        reactor.callWhenRunning(start)
        reactor.run()
    finally:
        children.stop_all()
    result = outcome.get("result")
    if isinstance(result, dict):
        print(report(result, args))
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"ledger benchmark failed: {result!r}; logs in {workdir}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
