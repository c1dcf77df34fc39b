"""Translation between Ollama's wire format and OpenAI's (pure functions, no I/O).

Requests go Ollama -> OpenAI: :func:`plan_chat` and :func:`plan_generate` check a
body the way Ollama does (same statuses, same wording where clients match on it)
and give either the upstream body or an answer to give at once (``load`` /
``unload``). Answers come back OpenAI -> Ollama one streamed chunk at a time
through a :class:`ChatTranslator`, which also assembles the non-streamed answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ollama_proxy.errors import BadRequest
from ollama_proxy.routing.running import parse_keep_alive
from ollama_proxy.wire.chunks import ChunkReader, Piece, ReadsChunks, new_call_id
from ollama_proxy.wire.images import image_parts
from ollama_proxy.wire.jsontext import parse_json
from ollama_proxy.wire.models import UpstreamModel, rfc3339
from ollama_proxy.wire.ollama_generate import FIM_INSTRUCTION, context_list, decode_context, encode_context, fim_message
from ollama_proxy.wire.tools import CallLedger, ollama_tool_call, tools_request

# The Ollama request's own fields, carried beside the OpenAI body for Ollama upstreams.
NATIVE_KEY = "x-ollama-native"

# Ollama option -> OpenAI/OpenRouter request field.
OPTION_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
}
_INTEGER_OPTIONS = {"top_k", "seed", "num_predict"}
THINK_LEVELS = ("high", "medium", "low", "max")
# Ollama's levels on OpenRouter's ``reasoning.effort`` scale ("max" is above "high").
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "xhigh"}


# -- reading request bodies ----------------------------------------------------
def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    if not raw.strip():
        raise BadRequest("missing request body")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def field_of(body: Mapping[str, Any], key: str, types: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[key]`` if present and of the right type, ``default`` if absent or null."""
    value = body.get(key)
    if value is None:
        return default
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in allowed:
        raise BadRequest(f"'{key}' has the wrong type: {json.dumps(value)}")
    if not isinstance(value, allowed):
        names = " or ".join(_type_name(t) for t in allowed)
        raise BadRequest(f"'{key}' must be {names}")
    return value


def _type_name(kind: type) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        dict: "an object",
        list: "an array",
    }.get(kind, kind.__name__)


def model_name(body: Mapping[str, Any]) -> str:
    """``model`` (or the legacy ``name``), required and a non-empty string."""
    value = body.get("model")
    if value in (None, ""):
        value = body.get("name")
    if value in (None, ""):
        raise BadRequest("model is required")
    if not isinstance(value, str):
        raise BadRequest("'model' must be a string")
    return value


def wants_stream(body: Mapping[str, Any]) -> bool:
    """Ollama streams unless told not to (the Python client always says)."""
    return bool(field_of(body, "stream", bool, True))


def keep_alive_of(body: Mapping[str, Any]) -> float | None:
    """``keep_alive`` in seconds (negative: forever), ``None`` when not given."""
    return parse_keep_alive(body.get("keep_alive"))


def sampling_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Map Ollama ``options`` to OpenAI request fields; load-time options are ignored."""
    options = field_of(body, "options", dict, {})
    mapped: dict[str, Any] = {}
    for name, target in OPTION_FIELDS.items():
        value = options.get(name)
        if value is None:
            continue
        if name == "stop":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadRequest("option 'stop' must be a string or a list of strings")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(f"option '{name}' must be a number")
        elif name in _INTEGER_OPTIONS:
            if value != int(value):
                raise BadRequest(f"option '{name}' must be an integer")
            value = int(value)
        if name == "num_predict" and value < 0:
            continue  # -1 (infinite) and -2 (fill context): no cap upstream
        mapped[target] = value
    return mapped


def think_value(body: Mapping[str, Any]) -> bool | str | None:
    """``think``: true/false or a level; Ollama's 400 wording for anything else."""
    value = body.get("think")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise BadRequest(
                f'invalid think value: {json.dumps(value)} (must be "high", "medium", "low", "max", true, or false)'
            )
        return value
    raise BadRequest('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


def reasoning_request(think: bool | str | None, model: UpstreamModel) -> dict[str, Any] | None:
    """OpenRouter's ``reasoning`` for Ollama's ``think``, for a model that can think."""
    if think is None or "thinking" not in model.capabilities():
        return None  # the model's own default (which for thinking models is to think)
    if think is False:
        # Models that cannot stop reasoning still keep it out of the answer.
        return {"enabled": False, "exclude": True}
    if think is True:
        return {"enabled": True}
    return {"effort": _EFFORT[think]}


def response_format(value: Any) -> dict[str, Any] | None:
    """Ollama ``format`` as OpenAI ``response_format``: "json" or a JSON schema object."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    # Ollama quotes the raw JSON it was given.
    raw = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    raise BadRequest(f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object')


def logprob_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """``logprobs`` / ``top_logprobs`` (0-20, as Ollama checks) for the upstream."""
    top = field_of(body, "top_logprobs", int, 0)
    if top < 0 or top > 20:
        raise BadRequest("top_logprobs must be between 0 and 20")
    if not field_of(body, "logprobs", bool, False):
        return {}
    fields: dict[str, Any] = {"logprobs": True}
    if top:
        fields["top_logprobs"] = top
    return fields


def require_capability(model: UpstreamModel, name: str, capability: str) -> None:
    """A 400 naming what the model cannot do, in Ollama's words."""
    if capability in model.capabilities():
        return
    if capability == "thinking":
        raise BadRequest(f'"{name}" does not support thinking')
    raise BadRequest(f"{name} does not support {capability}")


# -- Ollama -> OpenAI -------------------------------------------------------------
def _content(message: Mapping[str, Any], where: str) -> str:
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string")
    return content or ""


def _with_images(text: str, images: list[dict[str, Any]]) -> Any:
    if not images:
        return text
    return ([{"type": "text", "text": text}] if text else []) + images


def chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI ones: images as parts, tool calls and results paired by id."""
    ledger = CallLedger()
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"{where}.role must be a non-empty string")
        role = role.lower()  # Ollama lowercases roles
        text = _content(message, where)
        images = image_parts(message.get("images"), f"{where}.images")
        if role == "assistant" and message.get("tool_calls"):
            calls = ledger.assistant_calls(message["tool_calls"], where, index)
            converted.append({"role": "assistant", "content": text or None, "tool_calls": calls})
        elif role == "tool":
            call_id = ledger.result_id(message.get("tool_call_id"), message.get("tool_name"))
            if call_id is None:
                # A result with no call before it: OpenAI would refuse it, so it goes as text.
                name = message.get("tool_name") or "a tool"
                converted.append({"role": "user", "content": _with_images(f"Result of {name}: {text}", images)})
            else:
                converted.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            converted.append({"role": role, "content": _with_images(text, images)})
    return converted


@dataclass
class ChatPlan:
    """What to do with one chat or generate request.

    ``upstream`` is the OpenAI body to send; when it is ``None`` the answer is given
    at once with ``done_reason`` (``load`` or ``unload``).
    """

    upstream: dict[str, Any] | None
    keep_alive: float | None = None
    done_reason: str | None = None
    show_thinking: bool = True
    history: list[dict[str, str]] | None = None  # generate: the conversation for ``context``
    prompt: str = ""


def _upstream_body(
    body: Mapping[str, Any], model: UpstreamModel, messages: list[dict[str, Any]], think: bool | str | None
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": model.id,
        "messages": messages,
        "stream": True,
        # OpenRouter always sends usage; OpenAI only when asked.
        "stream_options": {"include_usage": True},
    }
    request.update(sampling_options(body))
    request.update(logprob_fields(body))
    fmt = response_format(body.get("format"))
    if fmt is not None:
        request["response_format"] = fmt
    reasoning = reasoning_request(think, model)
    if reasoning is not None:
        request["reasoning"] = reasoning
    native = {key: body[key] for key in ("options", "keep_alive") if body.get(key) is not None}
    if native:
        # For an Ollama upstream only (load-time options such as num_ctx, keep_alive);
        # every other provider drops this key before sending.
        request[NATIVE_KEY] = native
    return request


def _check_think(think: bool | str | None, model: UpstreamModel, name: str) -> None:
    if think not in (None, False):
        require_capability(model, name, "thinking")


def _has_images(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) for m in messages)


def plan_chat(body: Mapping[str, Any], model: UpstreamModel, name: str) -> ChatPlan:
    """Check an ``/api/chat`` body as Ollama does and plan the upstream request."""
    keep_alive = keep_alive_of(body)
    think = think_value(body)
    raw_messages = field_of(body, "messages", list, [])
    logprob_fields(body)
    if not raw_messages and keep_alive == 0:
        return ChatPlan(None, keep_alive, "unload")
    tools = tools_request(body.get("tools"))
    if tools:
        require_capability(model, name, "tools")
    _check_think(think, model, name)
    if not raw_messages:
        return ChatPlan(None, keep_alive, "load")
    messages = chat_messages(raw_messages)
    if _has_images(messages):
        require_capability(model, name, "vision")
    upstream = _upstream_body(body, model, messages, think)
    if tools:
        upstream["tools"] = tools
    return ChatPlan(upstream, keep_alive, show_thinking=think is not False)


def plan_generate(body: Mapping[str, Any], model: UpstreamModel, name: str) -> ChatPlan:
    """Check an ``/api/generate`` body as Ollama does and plan the upstream request."""
    keep_alive = keep_alive_of(body)
    think = think_value(body)
    prompt = field_of(body, "prompt", str, "")
    suffix = field_of(body, "suffix", str, "")
    system = field_of(body, "system", str, "")
    template = field_of(body, "template", str, "")
    raw = field_of(body, "raw", bool, False)
    context = context_list(body.get("context"))
    logprob_fields(body)
    if not prompt and keep_alive == 0:
        return ChatPlan(None, keep_alive, "unload")
    if raw and (template or system or context):
        raise BadRequest("raw mode does not support template, system, or context")
    _check_think(think, model, name)
    if not prompt:
        return ChatPlan(None, keep_alive, "load")
    images = image_parts(body.get("images"), "images")
    if images:
        require_capability(model, name, "vision")
    history = decode_context(context)
    messages: list[dict[str, Any]] = []
    if suffix:
        # Ollama's insert template takes only the prompt and the suffix.
        messages.append({"role": "system", "content": FIM_INSTRUCTION})
        messages.extend(history)
        messages.append({"role": "user", "content": _with_images(fim_message(prompt, suffix), images)})
    else:
        if system:
            messages.append({"role": "system", "content": system})
        messages.extend(history)
        messages.append({"role": "user", "content": _with_images(prompt, images)})
    upstream = _upstream_body(body, model, messages, think)
    return ChatPlan(upstream, keep_alive, show_thinking=think is not False, history=history, prompt=prompt)


def instant_answer(kind: str, name: str, done_reason: str, now: float) -> dict[str, Any]:
    """The answer to an empty prompt (``load``) or one that also unloads (``unload``)."""
    answer: dict[str, Any] = {"model": name, "created_at": rfc3339(now)}
    if kind == "chat":
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    answer["done"] = True
    answer["done_reason"] = done_reason
    return answer


# -- OpenAI -> Ollama -------------------------------------------------------------
# Ollama ends a turn that called tools with "stop" too.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "stop",
    "function_call": "stop",
    "content_filter": "stop",
    "eos": "stop",
}


@dataclass
class Timings:
    """Seconds on the reactor's clock, filled in as the request goes."""

    started: float
    upstream_headers: float | None = None
    first_token: float | None = None
    finished: float | None = None

    def nanoseconds(self) -> dict[str, int]:
        def ns(a: float | None, b: float | None) -> int:
            if a is None or b is None:
                return 0
            return max(0, int(round((b - a) * 1e9)))

        end = self.finished if self.finished is not None else self.started
        headers = self.upstream_headers if self.upstream_headers is not None else self.started
        first = self.first_token if self.first_token is not None else end
        return {
            "total_duration": ns(self.started, end),
            "load_duration": ns(self.started, headers),
            "prompt_eval_duration": ns(headers, first),
            "eval_duration": ns(first, end),
        }


@dataclass
class ChatTranslator(ReadsChunks):
    """Turns OpenAI stream chunks into Ollama objects for one request.

    ``kind`` is ``chat`` (answers carry ``message``) or ``generate`` (answers carry
    ``response``). With ``keep_text`` (non-streamed answers) the closing object
    carries the whole answer: text, thinking, tool calls and logprobs.
    """

    model: str
    kind: str
    clock: Callable[[], float]
    keep_text: bool = False
    show_thinking: bool = True
    history: list[dict[str, str]] | None = None
    prompt: str = ""
    new_call_id: Callable[[], str] = new_call_id
    timings: Timings = field(init=False)
    reader: ChunkReader = field(init=False)
    pieces: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.timings = Timings(started=self.clock())
        self.reader = ChunkReader(self.new_call_id)

    @classmethod
    def for_plan(
        cls, plan: ChatPlan, model: str, kind: str, clock: Callable[[], float], keep_text: bool
    ) -> ChatTranslator:
        return cls(
            model=model,
            kind=kind,
            clock=clock,
            keep_text=keep_text,
            show_thinking=plan.show_thinking,
            history=plan.history,
            prompt=plan.prompt,
        )

    @property
    def finish_reason(self) -> str | None:
        return self.reader.finish_reason

    def _stamp(self) -> str:
        return rfc3339(self.clock())

    def _render(self, pieces: list[Piece]) -> list[dict[str, Any]]:
        out = []
        for piece in pieces:
            if not self.show_thinking:
                piece.thinking = ""
            if not piece:
                continue
            if self.timings.first_token is None:
                self.timings.first_token = self.clock()
            calls = [ollama_tool_call(c) for c in piece.tool_calls]
            if self.keep_text or self.kind == "generate":
                # generate keeps its text for the ``context`` it hands back
                self.pieces.append(piece.content)
            if self.keep_text:
                self.thinking.append(piece.thinking)
                self.tool_calls.extend(calls)
                self.logprobs.extend(piece.logprobs)
            else:
                out.append(self._line(piece.content, piece.thinking, calls, piece.logprobs, done=False))
        return out

    def _line(
        self, text: str, thinking: str, calls: list[dict[str, Any]], logprobs: list[dict[str, Any]], done: bool
    ) -> dict[str, Any]:
        line: dict[str, Any] = {"model": self.model, "created_at": self._stamp()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            line["message"] = message
        else:
            line["response"] = text
            if thinking:
                line["thinking"] = thinking
        line["done"] = done
        if logprobs:
            line["logprobs"] = logprobs
        return line

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def final(self) -> dict[str, Any]:
        """The closing object (``done: true``); with ``keep_text`` it carries the whole answer."""
        self.timings.finished = self.clock()
        if self.keep_text:
            answer = self._line(self.text, "".join(self.thinking), self.tool_calls, self.logprobs, done=True)
        else:
            answer = self._line("", "", [], [], done=True)
        logprobs = answer.pop("logprobs", None)
        answer["done_reason"] = FINISH_REASONS.get(self.reader.finish_reason or "stop", "stop")
        if self.kind == "generate":
            history = list(self.history or [])
            history += [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.text}]
            answer["context"] = encode_context(history)
        answer.update(self.timings.nanoseconds())
        answer["prompt_eval_count"] = self.prompt_tokens or 0
        answer["eval_count"] = self.completion_tokens if self.completion_tokens is not None else 0
        if logprobs:
            answer["logprobs"] = logprobs
        return answer


# -- embeddings -------------------------------------------------------------------
def embed_inputs(body: Mapping[str, Any]) -> list[str]:
    """``input`` of ``/api/embed``: a string or a list of strings (Ollama drops an empty string)."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRequest("invalid input type")
