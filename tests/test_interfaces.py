"""Every provider and every stream provides its interface."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from ollama_proxy.config.providers import ProviderConfig
from ollama_proxy.config.settings import Timeouts, load_config
from ollama_proxy.providers.anthropic import AnthropicProvider
from ollama_proxy.providers.echo import EchoProvider, EchoStream
from ollama_proxy.providers.interfaces import IMessagesProvider, IProvider, IUpstreamStream
from ollama_proxy.providers.ollama import OllamaProvider
from ollama_proxy.providers.openai_compat import OpenAICompatibleProvider
from ollama_proxy.providers.registry import build_provider
from ollama_proxy.providers.stream import NDJSONParser, SSEStream


@pytest_twisted.ensureDeferred
async def test_every_provider_type_provides_IProvider():
    config = load_config(environ={})
    built = []
    for kind in ("openrouter", "openai", "anthropic", "ollama", "echo"):
        provider = build_provider(ProviderConfig(name=f"my-{kind}", type=kind, api_key="k"), config, global_reactor)
        assert verifyObject(IProvider, provider)
        assert provider.type == kind and provider.name == f"my-{kind}"
        built.append(provider)
    assert [type(p) for p in built] == [
        OpenAICompatibleProvider,
        OpenAICompatibleProvider,
        AnthropicProvider,
        OllamaProvider,
        EchoProvider,
    ]
    assert built[0].label == "OpenRouter (my-openrouter)"
    # Only Anthropic speaks the Messages API itself (/v1/messages goes to it natively).
    assert [IMessagesProvider.providedBy(p) for p in built] == [False, False, True, False, False]
    assert verifyObject(IMessagesProvider, built[2])
    for provider in built:
        await provider.close()


def test_every_stream_provides_IUpstreamStream():
    clock = Clock()
    sse = SSEStream(None, clock, 10, "x")  # the response is only read once delivery starts
    ndjson = SSEStream(None, clock, 10, "x", parser=NDJSONParser(), decode=lambda obj: [obj])
    echo = EchoStream("echo", [{"content": "a"}], "stop", {}, clock, 0)
    for stream in (sse, ndjson, echo):
        assert verifyObject(IUpstreamStream, stream)


def test_keys_where_needed():
    config = load_config(environ={})
    timeouts = Timeouts()
    assert not build_provider(
        ProviderConfig(name="openai", type="openai"), config, global_reactor
    ).configured  # the real OpenAI needs its key
    assert build_provider(
        ProviderConfig(name="vllm", type="openai", base_url="http://gpu:8000/v1"), config, global_reactor
    ).configured  # a local server does not
    assert build_provider(ProviderConfig(name="local", type="ollama"), config, global_reactor).configured
    assert not AnthropicProvider(
        name="a", base_url="http://x/v1", api_key=None, reactor=global_reactor, timeouts=timeouts
    ).configured
