"""Bounds the agent surfaces check before anything goes upstream: token caps, the
reasoning effort, base64 image data; each refused in the surface's own error shape."""

from __future__ import annotations

import base64

import pytest
import pytest_twisted

from .conftest import http

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
NOT_BASE64 = "this is *not* base64!"


def anthropic_error(response, *words):
    assert response.code == 400, response.body
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert all(w in body["error"]["message"] for w in words), body


def openai_error(response, *words):
    assert response.code == 400, response.body
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
    assert all(w in error["message"] for w in words), error


def image_message(data):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    return {
        "model": "openai/gpt-4o-mini",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, image]}],
    }


def image_input(url):
    part = {"type": "input_image", "image_url": url}
    return {
        "model": "openai/gpt-4o-mini",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "see"}, part]}],
    }


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("cap", "words"), [(-5, ("max_output_tokens", ">= 1", "-5")), (0, (">= 1",)), (10**30, ("<=",))]
)
async def test_responses_cap_out_of_bounds(proxy, cap, words):
    answer = await http(
        "POST", proxy.url + "/v1/responses", {"model": "google/gemini-pro", "input": "hi", "max_output_tokens": cap}
    )
    openai_error(answer, *words)


@pytest_twisted.ensureDeferred
async def test_messages_cap_out_of_bounds(proxy):
    body = {"model": "google/gemini-pro", "max_tokens": 10**30, "messages": [{"role": "user", "content": "hi"}]}
    anthropic_error(await http("POST", proxy.url + "/v1/messages", body), "max_tokens", "less than or equal")
    body["max_tokens"] = 2**31 - 1
    assert (await http("POST", proxy.url + "/v1/messages", body)).code == 200


@pytest_twisted.ensureDeferred
async def test_responses_reasoning_effort_names_the_value(proxy):
    body = {"model": "deepseek/deepseek-r1", "input": "hi", "reasoning": {"effort": "ultra"}}
    openai_error(await http("POST", proxy.url + "/v1/responses", body), "reasoning.effort", "ultra", "'minimal'")
    for effort in ("minimal", "xhigh", "max", "none"):  # OpenAI's values and Ollama's "max"
        body["reasoning"] = {"effort": effort}
        assert (await http("POST", proxy.url + "/v1/responses", body)).code == 200, effort


@pytest_twisted.ensureDeferred
async def test_messages_image_must_be_base64(proxy):
    anthropic_error(await http("POST", proxy.url + "/v1/messages", image_message(NOT_BASE64)), "source.data", "base64")
    good = await http("POST", proxy.url + "/v1/messages", image_message(PNG))
    assert good.code == 200 and good.json()["content"][0]["text"].endswith("[image/png]")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "url", [f"data:image/png;base64,{NOT_BASE64}", f"data:image/png,{PNG}", "data:image/png;base64,"]
)
async def test_responses_image_data_url_must_be_base64(proxy, url):
    openai_error(await http("POST", proxy.url + "/v1/responses", image_input(url)), "image_url", "base64-encoded")


@pytest_twisted.ensureDeferred
async def test_responses_good_data_url_passes(proxy):
    good = await http("POST", proxy.url + "/v1/responses", image_input(f"data:image/png;base64,{PNG}"))
    assert good.code == 200 and good.json()["output"][0]["content"][0]["text"].endswith("[image/png]")
