"""The benchmark's upstreams: nginx serving canned OpenAI answers, or the test simulator.

nginx costs the upstream side almost nothing (about 0.02 ms a request), so what the
benchmark measures is the proxy. It serves files from a temporary directory; the URL
path picks the answer, and each path is its own provider in the proxy's configuration:

========================  ==========================================================
``/fast/v1/...``          a short SSE answer (10 chunks, finish, usage, ``[DONE]``)
``/json/v1/...``          the same answer as one non-streamed JSON body (the direct
                          baseline: what a client asking upstream itself would read)
``/long/v1/...``          a 2,000-chunk SSE answer, one token per chunk
``/slow/v1/...``          an SSE answer paced by ``limit_rate`` (a chunk every second or
                          so), long enough to stay open for the whole memory run
``*/models``              each provider's model list
``/fast/v1/embeddings``   an embeddings answer
========================  ==========================================================

nginx refuses POST to a static file with 405; ``error_page 405 =200 $uri`` turns that
into the file itself. ``stub_status`` counts the open connections, which is how the
benchmark sees from outside that the proxy closed every upstream stream; the slow
answer's access log (``held.log``: the wall-clock time each one ended, and its status)
says when each of them closed.

When nginx is not installed the test suite's simulator (``bench/run_simulator.py``)
stands in, with the same roles under other model names.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

CANNED_WORDS = ["Hello!", "How", "can", "I", "help", "you", "today", "with", "this", "benchmark", "run?"]
EXPECT = b"help you today"
LONG_CHUNKS = 2000
CREATED = 1_700_000_000


def nginx_binary() -> str | None:
    """The nginx executable, if one is installed."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


@dataclass(frozen=True)
class Roles:
    """What the benchmark asks for, in the upstream's own names."""

    chat_model: str  # a short answer
    long_model: str  # the 2,000-token answer
    long_prompt: str
    long_tokens: int  # content events of the long answer (what the proxy relays as lines)
    slow_model: str  # a stream that stays open
    expect: bytes  # in every short answer
    direct_url: str  # POST here (non-streamed JSON) for the direct baseline
    direct_long_url: str  # POST here (SSE) for the direct long stream
    direct_headers: dict[str, str]


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _usage_chunk(model: str, completion: int) -> bytes:
    usage = {"prompt_tokens": 12, "completion_tokens": completion, "total_tokens": 12 + completion}
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [],
        "usage": usage,
    }
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def sse_answer(model: str, tokens: list[str]) -> bytes:
    """An OpenAI chat stream: role, one chunk per token, finish, usage, ``[DONE]``."""
    parts = [_chunk(model, {"role": "assistant", "content": ""})]
    parts += [_chunk(model, {"content": token}) for token in tokens]
    parts.append(_chunk(model, {}, "stop"))
    parts.append(_usage_chunk(model, len(tokens)))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def json_answer(model: str, text: str) -> bytes:
    answer = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
    }
    return json.dumps(answer).encode()


def models(*ids: str, embedding: tuple[str, ...] = ()) -> bytes:
    entries = [
        {"id": i, "name": i, "created": CREATED, "context_length": 8192, "supported_parameters": ["temperature"]}
        for i in ids
    ]
    entries += [
        {
            "id": i,
            "name": i,
            "created": CREATED,
            "context_length": 8192,
            "architecture": {"input_modalities": ["text"], "output_modalities": ["embeddings"]},
        }
        for i in embedding
    ]
    return json.dumps({"object": "list", "data": entries}).encode()


def embeddings() -> bytes:
    vector = [round(0.01 * i, 2) for i in range(64)]
    return json.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": "bench-embed",
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    ).encode()


NGINX_CONF = """\
worker_processes 1;
master_process off;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {connections}; multi_accept on; }}
http {{
    access_log off;
    log_format held '$msec $status';
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    types {{ }}
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    sendfile off;
    open_file_cache max=64 inactive=3600s;  # 10,000 streams of one file share one descriptor
    tcp_nodelay on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root}/www;
        error_page 405 =200 $uri;
        location = /nginx_status {{ stub_status; }}
        location ~ ^/(fast|long|slow)/v1/chat/completions$ {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
        }}
        location = /slow/v1/chat/completions {{
            default_type text/event-stream;
            limit_rate {slow_rate};
            limit_rate_after 512;
            # When each held stream ended (its $msec is taken at the close): the memory
            # section's per-connection view of the clients' leaving.
            access_log {root}/held.log held buffer=64k flush=1s;
        }}
    }}
}}
"""


class NginxUpstream:
    """Writes the canned answers and nginx's configuration into ``root``."""

    name = "nginx"

    def __init__(self, root: str, port: int, streams: int) -> None:
        self.root = os.path.abspath(os.path.join(root, "nginx"))
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.streams = streams

    def write(self) -> str:
        """Write the files; returns the configuration's path."""
        www = os.path.join(self.root, "www")
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
        tokens = [" " + w if i else w for i, w in enumerate(CANNED_WORDS)]
        long_tokens = [f" t{i % 100}" for i in range(LONG_CHUNKS)]
        # The slow answer: the first 512 bytes at once (the first events), then about 170 bytes a chunk at
        # 64 bytes/s: a chunk every few seconds,
        # for longer than any run holds it.
        slow_tokens = [" slow"] * 5000
        files = {
            "fast/v1/chat/completions": sse_answer("bench-chat", tokens),
            "json/v1/chat/completions": json_answer("bench-chat", "".join(tokens)),
            "long/v1/chat/completions": sse_answer("bench-long", long_tokens),
            "slow/v1/chat/completions": sse_answer("bench-slow", slow_tokens),
            "fast/v1/models": models("bench-chat", embedding=("bench-embed",)),
            "long/v1/models": models("bench-long"),
            "slow/v1/models": models("bench-slow"),
            "fast/v1/embeddings": embeddings(),
        }
        for path, data in files.items():
            full = os.path.join(www, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(data)
        conf = os.path.join(self.root, "nginx.conf")
        connections = max(4096, 2 * self.streams + 2048)
        with open(conf, "w", encoding="ascii") as f:
            f.write(
                NGINX_CONF.format(
                    root=self.root, port=self.port, nofile=connections + 1024, connections=connections, slow_rate=64
                )
            )
        return conf

    def argv(self, binary: str) -> list[str]:
        conf = self.write()
        return [binary, "-p", self.root, "-c", conf, "-e", os.path.join(self.root, "error.log")]

    def roles(self) -> Roles:
        return Roles(
            chat_model="bench-chat",
            long_model="bench-long",
            long_prompt="Tell me a long story",
            long_tokens=LONG_CHUNKS,
            slow_model="bench-slow",
            expect=EXPECT,
            direct_url=self.url + "/json/v1/chat/completions",
            direct_long_url=self.url + "/long/v1/chat/completions",
            direct_headers={"Content-Type": "application/json"},
        )

    def proxy_config(self, max_streams: int) -> str:
        """The proxy's TOML: one provider per answer, none of them limiting the run."""
        limit = max(1024, max_streams + 64)
        lines = []
        for index, name in enumerate(("fast", "long", "slow")):
            lines += [
                "[[providers]]",
                f'name = "{name}"',
                'type = "openai"',
                f'base_url = "{self.url}/{name}/v1"',
                f"priority = {index + 1}",
                f"max_in_flight = {limit}",
                f"max_queue = {limit}",
                "max_connections = 256",
                "",
            ]
        return "\n".join(lines)

    def status_endpoint(self) -> tuple[int, str]:
        """Where the holder (``bench/holder.py``) reads the open connections."""
        return self.port, "/nginx_status"

    def held_closes(self, since: float) -> list[float]:
        """Wall-clock times at which slow answers ended since ``since`` (nginx's
        ``$msec`` when it closed each), in order."""
        times = []
        try:
            with open(os.path.join(self.root, "held.log"), encoding="ascii") as log:
                for line in log:
                    stamp = float(line.split()[0])
                    if stamp >= since:
                        times.append(stamp)
        except OSError:
            return []
        return sorted(times)


class SimulatorUpstream:
    """The test suite's UpstreamSimulator in a process of its own (the fallback)."""

    name = "simulator"

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url  # http://127.0.0.1:PORT/api/v1
        self.root = url.rsplit("/api/v1", 1)[0]
        self.api_key = api_key

    def roles(self) -> Roles:
        words = 2000
        return Roles(
            chat_model="google/gemini-pro",
            long_model="google/gemini-pro",
            long_prompt=" ".join(["token"] * words),
            long_tokens=words + 1,  # the simulator answers "Echo:" first
            slow_model="sim/endless",
            expect=b"Echo: ",
            direct_url=self.url + "/chat/completions",
            direct_long_url=self.url + "/chat/completions",
            direct_headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )

    def proxy_config(self, max_streams: int) -> str:
        limit = max(1024, max_streams + 64)
        return "\n".join(
            [
                "[openrouter]",
                f'base_url = "{self.url}"',
                f'api_key = "{self.api_key}"',
                f"max_in_flight = {limit}",
                f"max_queue = {limit}",
                "",
            ]
        )

    def status_endpoint(self) -> tuple[int, str]:
        return int(self.root.rsplit(":", 1)[1]), "/_bench/stats"

    def held_closes(self, since: float) -> list[float]:
        return []  # the simulator keeps no log of them
