"""The one error funnel: an unexpected exception is a generic 500, its detail only in the log."""

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import fail, succeed
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ollama_proxy.api.native import HealthState, OllamaAPI
from ollama_proxy.config.settings import Config
from ollama_proxy.front.site import make_site
from ollama_proxy.ops.stats import Stats
from ollama_proxy.providers.interfaces import IProvider, IUpstreamStream
from ollama_proxy.providers.openai_compat import OpenAICompatibleProvider
from ollama_proxy.routing.router import Router
from ollama_proxy.wire.models import UpstreamModel

from .conftest import http


@implementer(IProvider)
class BrokenProvider:
    """A provider with a bug: what the funnel must contain."""

    name = type = "broken"
    label = "Broken"
    configured = True

    def list_models(self):
        return succeed(
            [UpstreamModel(id="b/m", provider="broken"), UpstreamModel(id="b/e", provider="broken", embedding=True)]
        )

    async def open_chat(self, body):
        raise RuntimeError("internal detail 42")

    async def embed(self, model, inputs, dimensions=None):
        raise KeyError("vectors")

    def check_health(self):
        return succeed(None)

    def close(self):
        return succeed(None)


def test_providers_provide_the_interface():
    verifyObject(IProvider, BrokenProvider())
    verifyObject(
        IProvider,
        OpenAICompatibleProvider(
            name="o",
            type="openrouter",
            label="OpenRouter",
            base_url="http://127.0.0.1:9",
            api_key=None,
            reactor=reactor,
            timeouts=Config().timeouts,
        ),
    )
    assert IProvider.implementedBy(OpenAICompatibleProvider)


@pytest_twisted.ensureDeferred
async def test_unexpected_errors_are_a_generic_500_with_the_detail_logged():
    provider = BrokenProvider()
    api = OllamaAPI(Config(), Router.single(provider, Config(), reactor), Stats(reactor), HealthState(), reactor)
    port = reactor.listenTCP(0, make_site(api.resource(), 1 << 20), interface="127.0.0.1")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        for path, body in [
            ("/api/chat", {"model": "b/m", "messages": [{"role": "user", "content": "x"}]}),
            ("/api/embed", {"model": "b/e", "input": "x"}),
        ]:
            r = await http("POST", url + path, {**body, "stream": False})
            assert r.code == 500
            assert r.json() == {"error": "Internal server error", "type": "internal_error"}
    finally:
        globalLogPublisher.removeObserver(events.append)
        await port.stopListening()
    logged = "\n".join(formatEvent(e) + str(e.get("log_failure", "")) for e in events)
    assert "internal detail 42" in logged


@implementer(IUpstreamStream)
class StreamThatBreaks:
    """One token, then a bug in our own code path (not an upstream error)."""

    def deliver(self, on_event):
        on_event(
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial"}, "finish_reason": None}]}
        )
        return fail(RuntimeError("bug after output"))

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@implementer(IProvider)
class ProviderThatBreaksMidStream(BrokenProvider):
    async def open_chat(self, body):
        return StreamThatBreaks()


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_after_output_began_ends_the_stream_with_an_error_line():
    provider = ProviderThatBreaksMidStream()
    api = OllamaAPI(Config(), Router.single(provider, Config(), reactor), Stats(reactor), HealthState(), reactor)
    port = reactor.listenTCP(0, make_site(api.resource(), 1 << 20), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        r = await http("POST", url + "/api/chat", {"model": "b/m", "messages": [{"role": "user", "content": "x"}]})
        assert r.code == 200
        lines = r.lines()  # every line is JSON: no error body glued onto the stream
        assert lines[0]["message"]["content"] == "partial"
        assert lines[-1] == {"error": "Internal server error"}
    finally:
        await port.stopListening()
