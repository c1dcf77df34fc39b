"""A simulator of a real Ollama server (the upstream kind, not the proxy), on loopback.

``GET /api/tags``, ``GET /api/version``, ``POST /api/chat`` (NDJSON stream, or one
object with ``stream: false``) and ``POST /api/embed``, with Ollama's own shapes:
``tool_calls`` whose arguments are objects, ``thinking`` when ``think`` is set,
``done_reason`` and the counts on the last line, ``{"error": ...}`` lines and
bodies. Unknown models answer 404 as Ollama does.

Behaviours (``behaviour`` attribute): ``midstream-error`` (an error line after
the first words), ``stall`` (silent after the first word), plus :meth:`fail_next`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twisted.web.server import NOT_DONE_YET, Request

from .simbase import SimulatorBase, last_user_text


def _tag(name: str, family: str, size: int, parameter_size: str, quantization: str = "Q4_K_M") -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-05-01T10:20:30.123456789+02:00",
        "size": size,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": parameter_size,
            "quantization_level": quantization,
        },
    }


MODELS = [
    _tag("llama3.2:latest", "llama", 2019393189, "3.2B"),
    _tag("qwen3:8b", "qwen3", 5225387923, "8.2B"),
    _tag("nomic-embed-text:latest", "nomic-bert", 274302450, "137M", "F16"),
]

# What /api/show reports, as a real Ollama does for these models.
CAPABILITIES = {
    "llama3.2:latest": ["completion", "tools"],
    "qwen3:8b": ["completion", "tools", "thinking"],
    "nomic-embed-text:latest": ["embedding"],
}
CONTEXT = {"llama3.2:latest": 131072, "qwen3:8b": 40960, "nomic-embed-text:latest": 2048}


def vector_of(text: str, size: int = 6) -> list[float]:
    digest = hashlib.sha256(("ollama:" + text).encode()).digest()
    return [round((digest[i] - 128) / 128.0, 6) for i in range(size)]


class OllamaSimulator(SimulatorBase):
    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.models = list(MODELS)

    def _names(self) -> set[str]:
        names = set()
        for entry in self.models:
            names.add(entry["name"])
            if entry["name"].endswith(":latest"):
                names.add(entry["name"][: -len(":latest")])
        return names

    def render(self, request: Request) -> Any:
        recorded = self.record(request)
        path = request.path.decode()
        if request.method == b"GET" and path == "/api/tags":
            return self.json(request, {"models": self.models})
        if request.method == b"POST" and path == "/api/show":
            return self._show(request, recorded.body)
        if request.method == b"GET" and path == "/api/version":
            return self.json(request, {"version": "0.12.6"})
        if request.method != b"POST" or path not in ("/api/chat", "/api/embed"):
            return self.json(request, {"error": "404 page not found"}, 404)
        injected = self.take_injected()
        if injected is not None:
            if injected.retry_after:
                request.setHeader(b"retry-after", injected.retry_after.encode())
            return self.json(request, {"error": f"injected failure {injected.status}"}, injected.status)
        body = recorded.body
        if not isinstance(body, dict):
            return self.json(request, {"error": "invalid JSON"}, 400)
        model = body.get("model")
        if model not in self._names():
            return self.json(request, {"error": f'model "{model}" not found, try pulling it first'}, 404)
        if path == "/api/embed":
            inputs = body.get("input")
            texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
            return self.json(
                request,
                {
                    "model": model,
                    "embeddings": [vector_of(t) for t in texts],
                    "prompt_eval_count": sum(len(t.split()) for t in texts),
                },
            )
        return self._chat(request, body)

    def _show(self, request: Request, body: Any) -> Any:
        name = body.get("model") if isinstance(body, dict) else None
        if name not in self._names():
            return self.json(request, {"error": f"model '{name}' not found"}, 404)
        entry = next(e for e in self.models if e["name"] in (name, f"{name}:latest"))
        family = entry["details"]["family"]
        return self.json(
            request,
            {
                "details": entry["details"],
                "model_info": {
                    "general.architecture": family,
                    f"{family}.context_length": CONTEXT.get(entry["name"], 4096),
                },
                "capabilities": CAPABILITIES.get(entry["name"], ["completion"]),
            },
        )

    def _chat(self, request: Request, body: dict[str, Any]) -> Any:
        messages = body.get("messages") or []
        model = str(body["model"])
        text = last_user_text(messages)
        lines: list[dict[str, Any]] = []
        head = {"model": model, "created_at": "2025-05-01T10:20:30.123Z"}
        last = messages[-1] if messages else {}
        if body.get("think"):
            lines.append(
                {
                    **head,
                    "message": {"role": "assistant", "content": "", "thinking": f"Thinking about: {text}"},
                    "done": False,
                }
            )
        if last.get("role") == "tool":
            words = f"Tool said: {last.get('content', '')}".split(" ")
        elif body.get("tools"):
            tool = body["tools"][0]["function"]["name"]
            lines.append(
                {
                    **head,
                    "message": {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"function": {"name": tool, "arguments": {"query": text}}}],
                    },
                    "done": False,
                }
            )
            words = []
        else:
            words = ["Echo:"] + text.split()
        limit = (body.get("options") or {}).get("num_predict")
        reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(words):
            words, reason = words[:limit], "length"
        for index, word in enumerate(words):
            lines.append(
                {**head, "message": {"role": "assistant", "content": word if index == 0 else " " + word}, "done": False}
            )
        lines.append(
            {
                **head,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
                "total_duration": 1000,
                "load_duration": 10,
                "prompt_eval_count": len(json.dumps(messages).split()),
                "prompt_eval_duration": 100,
                "eval_count": len(words),
                "eval_duration": 500,
            }
        )
        if body.get("stream") is False:
            final = dict(lines[-1])
            final["message"] = {"role": "assistant", "content": "".join(entry["message"]["content"] for entry in lines)}
            return self.json(request, final)
        request.setHeader(b"content-type", b"application/x-ndjson")
        done = {"finished": False}

        def lost(_: Any) -> None:
            if not done["finished"]:
                done["finished"] = True
                self.aborted()

        request.notifyFinish().addErrback(lost)
        content_lines = 0
        for line in lines:
            request.write(json.dumps(line).encode() + b"\n")
            if line["message"].get("content"):
                content_lines += 1
                if self.behaviour == "stall":
                    return NOT_DONE_YET
                if self.behaviour == "midstream-error" and content_lines == 2:
                    request.write(b'{"error":"an error was encountered while running the model: unexpected EOF"}\n')
                    break
        done["finished"] = True
        request.finish()
        return NOT_DONE_YET
