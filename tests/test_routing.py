"""Name resolution: priority, aliases, pins, the explicit provider/model form, the
ambiguity rule, filters and fallbacks; and the merged catalogue built from it."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.task import Clock

from ollama_proxy.config.providers import BreakerConfig, RoutingConfig
from ollama_proxy.errors import BadRequest, ModelForbidden, ModelNotFound
from ollama_proxy.providers.echo import EchoProvider
from ollama_proxy.routing.breaker import CircuitBreaker
from ollama_proxy.routing.catalogue import ModelCatalogue
from ollama_proxy.routing.limiter import ConcurrencyLimiter
from ollama_proxy.routing.modelfilter import ModelFilter
from ollama_proxy.routing.router import ProviderNotFound, Router
from ollama_proxy.routing.slots import ProviderSlot
from ollama_proxy.wire.models import UpstreamModel

LISTS = {
    "openrouter": [
        "openai/gpt-4o-mini",
        "google/gemini-pro",
        "meta-llama/llama-3.2-3b-instruct",
        "shared-model",
        "openai/text-embedding-3-small",
    ],
    "openai": ["gpt-4o-mini", "gpt-4o", "shared-model", "text-embedding-3-small"],
    "azure": ["gpt-4o-mini"],
    "local": ["llama3.2", "qwen3:8b", "shared-model"],
}
PRIORITY = {"openrouter": 1, "openai": 2, "azure": 3, "local": 4}


def model(provider: str, model_id: str) -> UpstreamModel:
    return UpstreamModel(id=model_id, provider=provider, embedding="embedding" in model_id)


def make_slot(name: str, ids: Sequence[str], clock: Clock, priority: int, enabled: bool = True) -> ProviderSlot:
    models = [model(name, i) for i in ids]
    catalogue = ModelCatalogue(lambda: succeed(models), clock)
    catalogue.replace(models)
    return ProviderSlot(
        provider=EchoProvider(clock, name=name),
        priority=priority,
        enabled=enabled,
        order=priority,
        catalogue=catalogue,
        breaker=CircuitBreaker(BreakerConfig(), clock, random.Random(0)),
        limiter=ConcurrencyLimiter(4, 4, 10, clock),
    )


def router(routing: RoutingConfig | None = None, allow=(), deny=(), disabled=(), priority=None) -> Router:
    routing = routing or RoutingConfig()
    clock = Clock()
    priorities = {**PRIORITY, **(priority or {})}
    slots = [make_slot(name, ids, clock, priorities[name], name not in disabled) for name, ids in LISTS.items()]
    return Router(slots, ModelFilter(allow, deny), routing, clock)


def providers(route) -> list[tuple[str, str]]:
    return [(t.slot.name, t.model.id) for t in route.targets]


def test_a_name_goes_to_every_provider_offering_it_in_priority_order():
    assert providers(router().route_now("shared-model")) == [
        ("openrouter", "shared-model"),
        ("openai", "shared-model"),
        ("local", "shared-model"),
    ]
    flipped = router(priority={"local": 0})
    assert providers(flipped.route_now("shared-model"))[0] == ("local", "shared-model")


def test_latest_is_optional_both_ways():
    r = router()
    assert providers(r.route_now("google/gemini-pro:latest")) == [("openrouter", "google/gemini-pro")]
    assert providers(r.route_now("llama3.2:latest")) == [("local", "llama3.2")]
    assert providers(r.route_now("qwen3:8b")) == [("local", "qwen3:8b")]
    with pytest.raises(ModelNotFound):
        r.route_now("qwen3")  # another tag is another model


def test_an_id_listed_by_a_provider_keeps_its_meaning_even_if_it_looks_explicit():
    # "openai/gpt-4o-mini" is OpenRouter's id; it does not mean the openai provider's gpt-4o-mini
    assert providers(router().route_now("openai/gpt-4o-mini")) == [("openrouter", "openai/gpt-4o-mini")]


def test_explicit_provider_form_picks_one_provider():
    r = router()
    assert providers(r.route_now("azure/gpt-4o-mini")) == [("azure", "gpt-4o-mini")]
    assert providers(r.route_now("openai/gpt-4o")) == [("openai", "gpt-4o")]  # not an OpenRouter id here
    assert providers(r.route_now("local/llama3.2:latest")) == [("local", "llama3.2")]
    assert providers(r.route_now("openai/shared-model")) == [("openai", "shared-model")]
    with pytest.raises(ModelNotFound):
        r.route_now("azure/gpt-4o")  # that provider does not have it
    with pytest.raises(ModelNotFound):
        r.route_now("nobody/gpt-4o")


def test_aliases_reach_cloud_models():
    r = router(
        RoutingConfig(
            aliases=(
                ("llama3.2-cloud", "meta-llama/llama-3.2-3b-instruct"),
                ("mini", "azure/gpt-4o-mini"),
                ("llama3.2", "meta-llama/llama-3.2-3b-instruct"),
            )
        )
    )
    route = r.route_now("llama3.2-cloud:latest")
    assert (
        providers(route) == [("openrouter", "meta-llama/llama-3.2-3b-instruct")]
        and route.name == "llama3.2-cloud:latest"
    )
    assert providers(r.route_now("mini")) == [("azure", "gpt-4o-mini")]  # an alias may name a provider
    # an alias wins over a model of the same name: that is what aliases are for
    assert providers(r.route_now("llama3.2")) == [("openrouter", "meta-llama/llama-3.2-3b-instruct")]
    assert providers(r.route_now("local/llama3.2")) == [("local", "llama3.2")]  # the local one stays reachable


def test_aliases_do_not_chain():
    r = router(RoutingConfig(aliases=(("a", "b"), ("b", "gpt-4o"))))
    with pytest.raises(ModelNotFound):
        r.route_now("a")


def test_pins_limit_and_order_the_providers():
    r = router(RoutingConfig(pins=(("shared-model", ("local", "openai")), ("gpt-4o-mini", ("azure",)))))
    assert providers(r.route_now("shared-model")) == [("local", "shared-model"), ("openai", "shared-model")]
    assert providers(r.route_now("gpt-4o-mini:latest")) == [("azure", "gpt-4o-mini")]
    pinned_elsewhere = router(RoutingConfig(pins=(("gpt-4o", ("azure",)),)))
    with pytest.raises(ModelNotFound):
        pinned_elsewhere.route_now("gpt-4o")
    # the explicit form is the client's own pin: it wins over the configured one
    assert providers(pinned_elsewhere.route_now("openai/gpt-4o")) == [("openai", "gpt-4o")]


def test_pins_apply_to_alias_targets():
    r = router(RoutingConfig(aliases=(("fast", "shared-model"),), pins=(("shared-model", ("local",)),)))
    assert providers(r.route_now("fast")) == [("local", "shared-model")]


def test_disabled_providers_offer_nothing():
    r = router(disabled=("openrouter",))
    assert providers(r.route_now("shared-model"))[0] == ("openai", "shared-model")
    with pytest.raises(ModelNotFound):
        r.route_now("google/gemini-pro")
    with pytest.raises(ModelNotFound):
        r.route_now("openrouter/google/gemini-pro")


def test_filter_removes_offers_and_forbids_what_is_left_out():
    r = router(deny=("local/*",))
    assert providers(r.route_now("shared-model")) == [("openrouter", "shared-model"), ("openai", "shared-model")]
    with pytest.raises(ModelForbidden) as caught:
        r.route_now("llama3.2")
    assert caught.value.status == 403 and caught.value.type == "model_forbidden"
    allow_only = router(allow=("google/*", "gpt-4o"))
    assert providers(allow_only.route_now("google/gemini-pro"))
    with pytest.raises(ModelForbidden):
        allow_only.route_now("gpt-4o-mini")
    with pytest.raises(ModelNotFound):
        allow_only.route_now("no-such-model")  # unknown stays 404, not 403


def test_alias_to_a_forbidden_model_is_forbidden():
    r = router(RoutingConfig(aliases=(("g", "google/gemini-pro"),)), deny=("google/*",))
    with pytest.raises(ModelForbidden):
        r.route_now("g")


def test_fallbacks_follow_the_models_own_providers():
    routing = RoutingConfig(
        fallbacks=(
            ("gpt-4o", ("azure/gpt-4o-mini", "google/gemini-pro", "missing", "openai/text-embedding-3-small")),
            ("*", ("llama3.2",)),
        )
    )
    r = router(routing)
    route = r.route_now("gpt-4o")
    assert providers(route) == [("openai", "gpt-4o"), ("azure", "gpt-4o-mini"), ("openrouter", "google/gemini-pro")]
    assert [t.fallback for t in route.targets] == [False, True, True]
    assert route.model.id == "gpt-4o"
    # "*" applies to every other model; the embedding fallback was skipped above (wrong kind)
    assert providers(r.route_now("google/gemini-pro")) == [("openrouter", "google/gemini-pro"), ("local", "llama3.2")]


def test_filtered_fallbacks_are_skipped():
    r = router(RoutingConfig(fallbacks=(("gpt-4o", ("google/gemini-pro", "llama3.2")),)), deny=("google/*",))
    assert providers(r.route_now("gpt-4o")) == [("openai", "gpt-4o"), ("local", "llama3.2")]


def test_embedding_models_cannot_chat():
    r = router()
    with pytest.raises(BadRequest):
        r.route_now("text-embedding-3-small", "chat")
    assert providers(r.route_now("text-embedding-3-small", "embed")) == [("openai", "text-embedding-3-small")]


def test_merged_catalogue_one_entry_per_name():
    r = router(
        RoutingConfig(aliases=(("llama3.2-cloud", "meta-llama/llama-3.2-3b-instruct"), ("ghost", "nowhere"))),
        deny=("qwen3*",),
    )
    entries = {e["name"]: e for e in r.tag_entries()}
    assert entries["shared-model:latest"]["provider"] == "openrouter"
    assert entries["gpt-4o-mini:latest"]["provider"] == "openai"  # before azure
    assert "qwen3:8b" not in entries and "ghost:latest" not in entries
    alias = entries["llama3.2-cloud:latest"]
    assert (
        alias["provider"] == "openrouter"
        and alias["details"]["parent_model"] == "meta-llama/llama-3.2-3b-instruct:latest"
    )
    assert len({e["digest"] for e in entries.values()}) == len(entries)
    assert [e["name"] for e in r.tag_entries("azure")] == ["gpt-4o-mini:latest"]
    assert r.model_count == sum(len(ids) for ids in LISTS.values())
    assert r.filtered_count == 1
    with pytest.raises(ProviderNotFound):
        r.tag_entries("nobody")


def test_resolve_and_lookup_match_the_catalogue_interface():
    r = router()
    assert r.lookup("azure/gpt-4o-mini").provider == "azure"
    d = ensureDeferred(r.resolve("google/gemini-pro"))
    assert d.result.id == "google/gemini-pro"
    assert r.loaded and r.last_refresh == 0 and r.last_error is None
