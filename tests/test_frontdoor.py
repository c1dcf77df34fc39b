"""The front door on its own: JSON for every failure, whatever sits behind it."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.logger import ILogObserver
from twisted.web.resource import IResource, Resource
from zope.interface.verify import verifyObject

from ollama_proxy.config.settings import Config
from ollama_proxy.front.door import FrontDoor, Gate
from ollama_proxy.front.lifecycle import Lifecycle
from ollama_proxy.front.site import make_site
from ollama_proxy.ops.logs import RedactingObserver
from ollama_proxy.ops.redaction import Redactor

from .conftest import http


class Broken(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        raise RuntimeError("a bug behind the door")


def test_interfaces():
    gate = Gate(Config(), Lifecycle(reactor), reactor)
    assert verifyObject(IResource, FrontDoor(gate, Broken()))
    assert verifyObject(ILogObserver, RedactingObserver(lambda event: None, Redactor()))


@pytest_twisted.ensureDeferred
async def test_a_failing_resource_behind_the_door_still_answers_json():
    gate = Gate(Config(), Lifecycle(reactor), reactor)
    port = reactor.listenTCP(0, make_site(gate.wrap(Broken()), 1024), interface="127.0.0.1")
    try:
        r = await http("GET", f"http://127.0.0.1:{port.getHost().port}/anything")
        assert r.code == 500 and r.json() == {"error": "Internal server error", "type": "internal_error"}
        assert r.header("x-request-id")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_url_that_is_not_utf8_gets_a_json_400(proxy):
    r = await http("GET", proxy.url + "/api/%ff%fe")
    assert r.code == 400 and r.json() == {"error": "the URL is not valid UTF-8", "type": "invalid_request"}


@pytest_twisted.ensureDeferred
async def test_no_server_header_names_twisted_and_its_version(proxy):
    # Ollama's server sends no Server header; Twisted's would tell a scanner its version.
    for method, path, body in (
        ("GET", "/", None),
        ("GET", "/api/tags", None),
        ("POST", "/api/chat", {"model": "no/such", "messages": []}),
        ("GET", "/api/nothing-here", None),
    ):
        r = await http(method, proxy.url + path, body)
        assert r.header("x-request-id") and r.header("server") is None, (path, r.header("server"))
