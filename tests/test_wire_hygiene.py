"""Logs and wire (issue #10, items 5, 14, 15 and 16).

A client's control characters never forge a text log line; a lone surrogate never
stops a line from being written; every status goes out with its standard reason
phrase; two ``Host`` headers are refused; and a failure Twisted would show as an
HTML page is a JSON 500 in the route's dialect.
"""

from __future__ import annotations

import json
from dataclasses import replace
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ollama_proxy.config.ops import AuthConfig, LimitsConfig, OpsConfig
from ollama_proxy.front.record import RequestRecord
from ollama_proxy.front.site import make_site
from ollama_proxy.ops.logs import daemon_observer, event_as_json, log_access
from ollama_proxy.ops.redaction import Redactor
from ollama_proxy.service import makeService

from .conftest import base_config
from .test_hardening_connections import connect
from .test_limits import raw

FORGED = "\n2026-01-01T00:00:00+0000 [ollama_proxy.access#info] POST /api/chat 200 1.0ms id=FORGED\rX"


def text_log(tmp_path: Any) -> tuple[Any, Any]:
    """The daemon's text observer writing to a file, and a way to read the file."""
    files: list[Any] = []
    clock = Clock()
    observer = daemon_observer(
        log_format="text",
        redactor=Redactor(),
        logfile=str(tmp_path / "p.log"),
        nodaemon=False,
        install_rotation=files.append,
        clock=clock,
    )

    def read() -> str:
        clock.advance(0)  # the turn's lines are written
        files[0].flush()
        return (tmp_path / "p.log").read_bytes().decode("utf-8")

    return observer, read


# -- 14: log forging ---------------------------------------------------------------------------
@pytest.mark.parametrize("auth", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_path_with_cr_lf_cannot_forge_an_access_line(make_proxy, access_events, tmp_path, auth):
    proxy = make_proxy(ops=OpsConfig(auth=AuthConfig(enabled=True, tokens=()))) if auth else make_proxy()
    client = await raw(
        proxy.port, b"GET /api/tags/x" + quote(FORGED).encode() + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    await client.wait_received(1)
    (event,) = access_events
    assert "\n" in event["path"] and event["status"] == (401 if auth else 404)
    observer, read = text_log(tmp_path)
    observer(event)
    text = read()
    assert text.count("\n") == 1 and "\r" not in text, text  # one line, no carriage return
    assert "id=FORGED\\rX" in text and "/api/tags/x\\n2026" in text


def test_every_text_field_is_escaped_and_a_lone_surrogate_is_written(tmp_path):
    observer, read = text_log(tmp_path)
    log = Logger(observer=observer, namespace="ollama_proxy.test")
    log.info("model {model} from {who}", model="m\x1b[31m\u2028x\ud800", who=ValueError("a\nb"))
    log.info("second")
    text = read()
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert "model m\\x1b[31m\\u2028x\\ud800 from ValueError: a\\nb" in lines[0]


def test_an_access_line_with_a_lone_surrogate_is_valid_json():
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        log_access(RequestRecord(request_id="r", method="POST", path="/api/chat", model="x\ud800", status=404))
    finally:
        globalLogPublisher.removeObserver(events.append)
    (event,) = [e for e in events if e.get("request_id") == "r"]
    line = event_as_json(event)
    line.encode("utf-8")  # strict: a UTF-8 log file can hold it
    assert json.loads(line)["model"] == "x\ud800"


# -- 15: reason phrases ----------------------------------------------------------------------------
# Every status the README says the proxy sends.
STATUSES = [200, 204, 400, 401, 403, 404, 405, 408, 413, 429, 431, 500, 501, 502, 503, 504]


class Status(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(int(request.postpath[0]))
        return b""


@pytest_twisted.ensureDeferred
async def test_every_status_has_its_standard_reason_phrase():
    port = reactor.listenTCP(0, make_site(Status(), 1024), interface="127.0.0.1")
    try:
        for status in STATUSES:
            client = await raw(
                port.getHost().port, b"GET /%d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % status
            )
            await client.closed
            expected = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
            assert client.received.startswith(expected), client.received[:60]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_429_from_upstream_says_too_many_requests(proxy):
    body = json.dumps({"model": "sim/fail-429", "messages": [{"role": "user", "content": "x"}], "stream": False})
    client = await raw(
        proxy.port,
        b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body.encode()),
    )
    await client.closed
    assert client.received.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), client.received[:80]


# -- 16: one Host --------------------------------------------------------------------------------
@pytest.mark.parametrize("hosts", [(b"evil", b"localhost"), (b"localhost", b"localhost"), (b"localhost", b"evil")])
@pytest_twisted.ensureDeferred
async def test_two_host_headers_are_a_400(proxy, access_events, hosts):
    client = await raw(
        proxy.port,
        b"GET /api/version HTTP/1.1\r\nHost: %s\r\nHost: %s\r\nConnection: close\r\n\r\n" % hosts,
    )
    await client.closed
    head, _, body = client.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request"), head
    assert json.loads(body)["error"] == "more than one Host header"
    assert [e["status"] for e in access_events] == [400]


# -- 5: never Twisted's HTML page ------------------------------------------------------------------
class FailsLater(Resource):
    """What Klein does when even an error handler fails: hand the failure to the request."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        reactor.callLater(0, request.processingFailed, Failure(RuntimeError("internal detail 42")))
        return NOT_DONE_YET


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_a_failure_twisted_would_render_as_html_is_json_in_the_dialect(path):
    port = reactor.listenTCP(0, make_site(FailsLater(), 1024), interface="127.0.0.1")
    try:
        client = await raw(
            port.getHost().port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
        )
        await client.closed
    finally:
        await port.stopListening()
    head, _, body = client.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error"), head
    assert b"content-type: application/json; charset=utf-8" in head.lower()
    error = json.loads(body)["error"]
    assert (error["message"] if path.startswith("/v1/") else error) == "Internal server error"
    assert b"internal detail" not in body and b"<html>" not in body


# -- 5: a request refused before it was parsed still gets its access line -------------------------
@pytest.fixture
def clocked_site(simulator: Any) -> Any:
    clock = Clock()
    limits = LimitsConfig(header_timeout=10, max_connections=1, max_header_bytes=4096)
    site = makeService(replace(base_config(simulator), ops=OpsConfig(limits=limits)), reactor, clock=clock).site
    return site, clock


def test_refusals_at_the_channel_get_one_access_line_each(clocked_site, access_events):
    site, clock = clocked_site
    slow, transport = connect(site)
    slow.dataReceived(b"GET /api/version HTTP/1.1\r\nHo")
    clock.advance(10.1)  # 408: the headers missed their deadline
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    slow.connectionLost(None)
    big, transport = connect(site)
    big.dataReceived(b"GET /api/version HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n")  # 431
    assert transport.value().startswith(b"HTTP/1.1 431 ")
    big.connectionLost(None)
    connect(site)  # the one connection allowed
    _, refused = connect(site)  # 503: past the cap
    assert refused.value().startswith(b"HTTP/1.1 503 ")
    assert [(e["status"], e["client"], e["method"], e["path"]) for e in access_events] == [
        (408, "127.0.0.1", "GET", "/api/version"),  # as far as the request line came
        (431, "127.0.0.1", "GET", "/api/version"),
        (503, "127.0.0.1", "-", "-"),
    ]
