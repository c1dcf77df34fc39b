"""One view of all workers: the JSON views asked of every worker and merged.

In worker mode each worker also serves its own Site on a private Unix socket
(``worker-I.sock`` in the main process's runtime directory). A request for one of the
views below, arriving from a client on any worker, is sent with the client's own
headers (so authentication holds) to every worker's socket, and the answers are
merged. The Prometheus format of ``/metrics`` is not fanned out: prometheus_client's
multiprocess mode reads every worker's samples from the shared directory.

How the JSON is merged (:func:`merge`): counts add up (requests, errors, tokens,
in-flight, queued, ``max_in_flight`` shares); rates and averages are recomputed from
the sums (``error_rate``, ``avg_response_time_ms`` weighted by requests); minima and
maxima stay minima and maxima; what every worker knows alike (model counts, uptime,
priority, times of the last refresh) is the largest; ``status`` and breaker states
are the worst any worker reports; ``/api/ps`` is the union of the running models,
each with its latest expiry. A worker that does not answer within 2 seconds is left
out, and the answer says how many answered (``workers``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

log = Logger()

_VIEWS = (b"/metrics", b"/health", b"/api/providers", b"/api/ps")
_FORWARDED = (b"authorization", b"accept", b"host", b"origin", b"x-request-id")
_MAX = frozenset(
    {
        "uptime_seconds",
        "timestamp",
        "model_count",
        "filtered_model_count",
        "models_available",
        "priority",
        "max_response_time_ms",
        "max_ms",
        "open_remaining_seconds",
        "last_model_refresh",
        "last_health_check",
        "expires_at",
    }
)
_MIN = frozenset({"min_response_time_ms", "min_ms"})
_WORST = {
    "status": ("healthy", "ok", "degraded", "unhealthy"),
    "circuit_breaker_state": ("closed", "half_open", "open"),
}
_KEYED = (("name",), ("provider",), ("model",), ("method", "endpoint"), ("endpoint",))
# Per-endpoint percentiles cannot be merged from percentiles: the largest is reported.
_PERCENTILES = frozenset({"p50_ms", "p95_ms", "p99_ms"})


def socket_path(runtime_dir: str, index: int) -> str:
    return os.path.join(runtime_dir, f"worker-{index}.sock")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge(answers: list[Any]) -> Any:
    """Merge the same view from several workers (see the module docstring)."""
    first = answers[0]
    if isinstance(first, dict):
        return _merge_dicts([a for a in answers if isinstance(a, dict)])
    if isinstance(first, list):
        return _merge_lists([a for a in answers if isinstance(a, list)])
    return first


def _merge_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    for key in keys:
        values = [d[key] for d in dicts if key in d]
        present = [v for v in values if v is not None]
        if not present:
            out[key] = None
        elif all(_number(v) for v in present):
            if key in _MAX or key in _PERCENTILES:
                out[key] = max(present)
            elif key in _MIN:
                nonzero = [v for v in present if v]
                out[key] = min(nonzero) if nonzero else 0
            else:
                out[key] = sum(present)
        elif key in _WORST and all(isinstance(v, str) for v in present):
            order = _WORST[key]
            out[key] = max(present, key=lambda v: order.index(v) if v in order else len(order))
        elif key in _MAX and all(isinstance(v, str) for v in present):
            out[key] = max(present)
        elif key == "healthy" and all(isinstance(v, bool) for v in present):
            out[key] = all(present)
        elif all(isinstance(v, dict) for v in present):
            out[key] = _merge_dicts(present)
        elif all(isinstance(v, list) for v in present):
            out[key] = _merge_lists(present)
        else:
            out[key] = present[0]
    counted = out.get("count")
    if _number(counted) and "avg_ms" in out:
        weighted = sum(d["avg_ms"] * d.get("count", 0) for d in dicts if _number(d.get("avg_ms")))
        out["avg_ms"] = round(weighted / counted, 3) if counted else 0.0
    requests = out.get("request_count")
    if _number(requests):
        if "error_rate" in out and _number(out.get("error_count")):
            out["error_rate"] = round(out["error_count"] / requests, 4) if requests else 0.0
        if "avg_response_time_ms" in out:
            weighted = sum(
                d.get("avg_response_time_ms", 0) * d.get("request_count", 0)
                for d in dicts
                if _number(d.get("avg_response_time_ms")) and _number(d.get("request_count"))
            )
            out["avg_response_time_ms"] = round(weighted / requests, 3) if requests else 0.0
    return out


def _merge_lists(lists: list[list[Any]]) -> list[Any]:
    items = [item for lst in lists for item in lst]
    if not items or not all(isinstance(i, dict) for i in items):
        return lists[0]
    keys = next((k for k in _KEYED if all(all(part in i for part in k) for i in items)), None)
    if keys is None:
        return items
    groups: dict[Any, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(tuple(item[part] for part in keys), []).append(item)
    return [_merge_dicts(group) if len(group) > 1 else group[0] for group in groups.values()]


@implementer(IAgentEndpointFactory)
class _WorkerSockets:
    def __init__(self, reactor: Any, runtime_dir: str) -> None:
        self.reactor = reactor
        self.runtime_dir = runtime_dir

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:  # noqa: N802 - Twisted's interface
        index = int(uri.host.decode().rsplit("-", 1)[1])
        return UNIXClientEndpoint(self.reactor, socket_path(self.runtime_dir, index), timeout=2)


class Aggregator(Resource):
    """Answers the JSON views for all workers together; everything else goes to ``inner``."""

    isLeaf = True

    def __init__(self, inner: Any, reactor: Any, runtime_dir: str, count: int) -> None:
        super().__init__()
        self.inner = inner
        self.reactor = reactor
        self.count = count
        self.agent = Agent.usingEndpointFactory(reactor, _WorkerSockets(reactor, runtime_dir))

    def _fans_out(self, request: Any) -> bool:
        if request.method != b"GET" or not hasattr(request.getHost(), "port"):
            return False  # a sibling asking on the private socket: the local view
        path = request.path.rstrip(b"/") or b"/"
        if not (path in _VIEWS or (path.startswith(b"/api/providers/") and path.endswith(b"/stats"))):
            return False
        if path == b"/metrics":
            from ollama_proxy.ops.metrics import wants_prometheus

            return not wants_prometheus(request)
        return True

    def render(self, request: Any) -> Any:
        if not self._fans_out(request):
            return self.inner.render(request)
        d = ensureDeferred(self._gather(request))
        d.addErrback(lambda failure: log.failure("merging the workers' views failed", failure))
        return NOT_DONE_YET

    async def _gather(self, request: Any) -> None:
        headers = Headers()
        for name in _FORWARDED:
            value = request.getHeader(name)
            if value is not None:
                headers.setRawHeaders(name, [value])
        calls = []
        for index in range(self.count):
            d = self.agent.request(b"GET", b"http://worker-%d%s" % (index, request.uri), headers)
            d.addCallback(lambda response: readBody(response).addCallback(lambda body: (response, body)))
            d.addTimeout(2, self.reactor)
            calls.append(d)
        results = await DeferredList(calls, consumeErrors=True)
        answered = [value for ok, value in results if ok]
        if not answered:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            request.write(b'{"error": "no worker answered"}')
            request.finish()
            return
        response, body = answered[0]
        good = [(r, b) for r, b in answered if r.code == 200]
        if response.code != 200 or len(good) != len(answered):
            response, body = next(((r, b) for r, b in answered if r.code != 200), answered[0])
        else:
            try:
                merged = merge([json.loads(b) for _, b in good])
                if isinstance(merged, dict):
                    merged["workers"] = {"count": self.count, "answered": len(good)}
                body = json.dumps(merged, ensure_ascii=False).encode("utf-8")
            except ValueError:
                pass  # not JSON after all: the first answer as it is
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in (b"content-length", b"date", b"server", b"transfer-encoding", b"connection"):
                request.responseHeaders.setRawHeaders(name, values)
        request.write(body)
        request.finish()
