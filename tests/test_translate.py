"""Pure translation between Ollama's and OpenAI's wire formats."""

import json

import pytest

from ollama_proxy.errors import BadRequest, UpstreamStreamError
from ollama_proxy.wire.framing import ndjson
from ollama_proxy.wire.models import UpstreamModel
from ollama_proxy.wire.ollama_answer import ChatTranslator
from ollama_proxy.wire.ollama_options import sampling_options
from ollama_proxy.wire.ollama_request import embed_inputs, plan_chat, plan_generate
from ollama_proxy.wire.request_body import model_name, parse_body, wants_stream


def chat_request(body, model_id):
    return plan_chat(body, UpstreamModel(id=model_id), model_id).upstream


def generate_request(body, model_id):
    return plan_generate(body, UpstreamModel(id=model_id), model_id).upstream


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_parse_body_rejects_non_objects_and_bad_json():
    with pytest.raises(BadRequest, match="invalid JSON"):
        parse_body(b"{not json")
    with pytest.raises(BadRequest, match="JSON object"):
        parse_body(b"[1, 2]")
    with pytest.raises(BadRequest, match="missing"):
        parse_body(b"  ")
    assert parse_body(b'{"model": "x"}') == {"model": "x"}


def test_model_name_required_and_legacy_name_accepted():
    with pytest.raises(BadRequest, match="model is required"):
        model_name({})
    with pytest.raises(BadRequest, match="must be a string"):
        model_name({"model": 3})
    assert model_name({"name": "m"}) == "m"


def test_stream_defaults_to_true_and_must_be_boolean():
    assert wants_stream({}) is True
    assert wants_stream({"stream": False}) is False
    with pytest.raises(BadRequest):
        wants_stream({"stream": "yes"})


def test_options_mapping():
    mapped = sampling_options(
        {
            "options": {
                "temperature": 0.5,
                "top_p": 0.9,
                "top_k": 40,
                "min_p": 0.05,
                "seed": 42,
                "num_predict": 128,
                "stop": "END",
                "presence_penalty": 0.1,
                "frequency_penalty": 0.2,
                "repeat_penalty": 1.1,
                "num_ctx": 4096,
                "num_gpu": 1,
            }
        }
    )
    assert mapped == {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 42,
        "max_tokens": 128,
        "stop": ["END"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "repetition_penalty": 1.1,
    }


def test_infinite_num_predict_sends_no_cap():
    assert sampling_options({"options": {"num_predict": -1}}) == {}


@pytest.mark.parametrize(
    "options",
    [{"temperature": "hot"}, {"seed": 1.5}, {"stop": [1]}, {"top_k": True}],
)
def test_bad_option_types_are_400(options):
    with pytest.raises(BadRequest):
        sampling_options({"options": options})


def test_options_must_be_an_object():
    with pytest.raises(BadRequest, match="'options' must be an object"):
        sampling_options({"options": [1]})


def test_chat_request_shape():
    body = chat_request(
        {
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
            "options": {"temperature": 0},
        },
        "up/model",
    )
    assert body == {
        "model": "up/model",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        # The client's own options, for an Ollama upstream (the others drop them).
        "x-ollama-native": {"options": {"temperature": 0}},
    }


@pytest.mark.parametrize("messages", ["hi", [1], [{"content": "x"}], [{"role": "user", "content": 5}]])
def test_chat_request_rejects_bad_messages(messages):
    with pytest.raises(BadRequest):
        chat_request({"messages": messages}, "m")


def test_generate_request_puts_system_first():
    body = generate_request({"prompt": "p", "system": "s"}, "m")
    assert body["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}]


def chunk(content=None, finish=None, usage=None):
    obj = {
        "choices": [{"index": 0, "delta": {"content": content} if content is not None else {}, "finish_reason": finish}]
    }
    if usage is not None:
        obj = {"choices": [], "usage": usage}
    return obj


def test_stream_translation_and_final_object_with_measured_durations():
    clock = FakeClock()
    translator = ChatTranslator(model="m:latest", kind="chat", clock=clock)
    clock.now += 0.5
    translator.timings.upstream_headers = clock()
    clock.now += 0.25
    out = translator.feed(chunk("Hel"))
    assert out == [
        {
            "model": "m:latest",
            "created_at": out[0]["created_at"],
            "message": {"role": "assistant", "content": "Hel"},
            "done": False,
        }
    ]
    assert translator.feed(chunk("")) == []
    clock.now += 1.0
    translator.feed(chunk("lo", finish="length"))
    translator.feed(chunk(usage={"prompt_tokens": 7, "completion_tokens": 2}))
    final = translator.final()
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == 7 and final["eval_count"] == 2
    assert final["total_duration"] == 1_750_000_000
    assert final["load_duration"] == 500_000_000
    assert final["prompt_eval_duration"] == 250_000_000
    assert final["eval_duration"] == 1_000_000_000
    assert final["created_at"].endswith("Z") and "T" in final["created_at"]


def test_non_stream_generate_keeps_the_text():
    translator = ChatTranslator(model="m", kind="generate", clock=FakeClock(), keep_text=True)
    assert translator.feed(chunk("a")) == []
    translator.feed(chunk("b", finish="stop"))
    final = translator.final()
    assert final["response"] == "ab" and final["done_reason"] == "stop"


def test_mid_stream_error_chunk_raises():
    translator = ChatTranslator(model="m", kind="chat", clock=FakeClock())
    with pytest.raises(UpstreamStreamError, match="boom"):
        translator.feed({"error": {"code": 502, "message": "boom"}, "choices": [{"finish_reason": "error"}]})


def test_ndjson_is_one_compact_line():
    line = ndjson({"a": "é", "b": [1]})
    assert line == '{"a":"é","b":[1]}\n'.encode()
    assert json.loads(line) == {"a": "é", "b": [1]}


def test_embed_inputs():
    assert embed_inputs({"input": "x"}) == ["x"]
    assert embed_inputs({"input": ["x", "y"]}) == ["x", "y"]
    with pytest.raises(BadRequest):
        embed_inputs({"input": [1]})
