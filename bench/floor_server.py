"""One bare relay for ``bench/floor.py``: a server that answers every POST with one upstream
answer and does nothing else, built from the parts the proxy is made of.

    python bench/floor_server.py PORT VARIANT UPSTREAM_URL

VARIANT is ``SERVER+CLIENT``: SERVER ``web`` (a ``twisted.web`` resource) or ``klein`` (the
same behind a Klein route); CLIENT ``none`` (a fixed answer from memory, no upstream),
``lean`` (the proxy's own HTTP/1.1 client, ``providers/http1.py``), ``agent``
(``twisted.web.client.Agent`` and ``readBody``) or ``treq`` (treq over that Agent, as the
proxy's model lists use it).
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import treq  # noqa: E402
from klein import Klein  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.web import resource, server  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool, readBody  # noqa: E402

from ollama_proxy.providers.http1 import HTTP1Pool, UpstreamResponse  # noqa: E402

ANSWER = b'{"model":"bench","message":{"role":"assistant","content":"Hello!"},"done":true}'


def _lean_body(response: UpstreamResponse) -> Deferred[bytes]:
    return readBody(response)  # type: ignore[arg-type]


def fetcher(client: str, url: str) -> Any:
    """A function returning a Deferred of the upstream answer's bytes (or the bytes)."""
    if client == "none":
        return None
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = 128
    if client == "agent":
        agent = Agent(reactor, pool=pool)
        target = url.encode("ascii")
        return lambda: agent.request(b"POST", target).addCallback(readBody)
    if client == "treq":
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        return lambda: http.post(url, data=b"{}").addCallback(treq.content)
    if client == "lean":
        base, _, path = url.partition("/json/")
        lean = HTTP1Pool(reactor, base, connect_timeout=5, max_idle=128)
        target = ("/json/" + path).encode("ascii")
        head = b"Content-Type: application/json\r\n"
        return lambda: lean.request(b"POST", target, head, b"{}").addCallback(_lean_body)
    raise SystemExit(f"unknown client {client!r}")


def main() -> None:
    port, variant, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server_kind, _, client = variant.partition("+")
    fetch = fetcher(client, url)

    def answer(request: Any) -> Any:
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return ANSWER if fetch is None else fetch()

    if server_kind == "klein":
        app = Klein()
        app.route("/api/chat", methods=["POST"])(answer)
        root: Any = app.resource()
    elif server_kind == "web":

        class Relay(resource.Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:  # noqa: N802 - twisted.web's name
                result = answer(request)
                if isinstance(result, bytes):
                    return result

                def done(body: bytes) -> None:
                    if not request._disconnected:  # bench-only: a client gone at the end of a run
                        request.write(body)
                        request.finish()

                result.addCallback(done).addErrback(lambda _: None)
                return server.NOT_DONE_YET

        root = Relay()
    else:
        raise SystemExit(f"unknown server {server_kind!r}")
    site = server.Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log: the floor
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
