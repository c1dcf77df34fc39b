"""``/v1/messages/count_tokens`` checks a body exactly as ``/v1/messages`` does: what a
translating provider cannot take is a 400 on both; what only Anthropic takes is counted
where Anthropic serves the model."""

from __future__ import annotations

import pytest
import pytest_twisted

from .conftest import http
from .multi import ANTHROPIC_KEY, provider

HI = [{"role": "user", "content": "hi"}]
TRANSLATED_ONLY = {
    "unknown block": {"messages": [{"role": "user", "content": [{"type": "hologram", "x": 1}]}]},
    "tool_use from the user": {
        "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}]
    },
    "image in system": {
        "system": [{"type": "image", "source": {"type": "url", "url": "http://x/a.png"}}],
        "messages": HI,
    },
    "file image source": {
        "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "x"}}]}]
    },
    "server tool": {"tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": HI},
}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("case", sorted(TRANSLATED_ONLY))
async def test_count_refuses_what_messages_refuses_for_a_translating_provider(proxy, case):
    body = {"model": "openai/gpt-4o-mini", **TRANSLATED_ONLY[case]}
    created = await http("POST", proxy.url + "/v1/messages", {**body, "max_tokens": 5})
    counted = await http("POST", proxy.url + "/v1/messages/count_tokens", body)
    assert created.code == 400 and counted.code == 400, counted.body
    assert counted.json() == created.json()
    assert counted.json()["error"]["type"] == "invalid_request_error"


@pytest_twisted.ensureDeferred
async def test_count_refuses_a_bad_field_and_still_estimates_a_good_body(proxy):
    bad = {"model": "openai/gpt-4o-mini", "messages": HI, "temperature": "hot"}
    counted = await http("POST", proxy.url + "/v1/messages/count_tokens", bad)
    assert counted.code == 400 and "temperature" in counted.json()["error"]["message"]
    good = await http("POST", proxy.url + "/v1/messages/count_tokens", {"model": "openai/gpt-4o-mini", "messages": HI})
    assert good.code == 200 and good.json()["input_tokens"] > 0


@pytest_twisted.ensureDeferred
async def test_anthropic_counts_what_only_it_takes(make_multi, anthropic_sim):
    proxy = make_multi([provider("claude", "anthropic", anthropic_sim.base_url, ANTHROPIC_KEY)], openrouter=False)
    body = {"model": "claude-sonnet-4-5", **TRANSLATED_ONLY["server tool"]}
    counted = await http("POST", proxy.url + "/v1/messages/count_tokens", body)
    assert counted.code == 200 and counted.json()["input_tokens"] > 1000  # Anthropic's own count
    assert anthropic_sim.posts("/v1/messages/count_tokens")[-1].body["tools"] == body["tools"]
