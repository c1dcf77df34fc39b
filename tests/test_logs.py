"""Logs: redaction everywhere, JSON lines, the daemon's observer choices, access lines."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import (
    FilteringLogObserver,
    LegacyLogObserverWrapper,
    Logger,
    LogLevel,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

from ollama_proxy.config.ops import LogConfig, OpsConfig
from ollama_proxy.ops.logs import RedactingObserver, daemon_observer, jsonLinesObserver, redacting
from ollama_proxy.ops.redaction import REDACTED, Redactor

from .conftest import http
from .simulator import API_KEY

SECRET = "sk-or-v1-topsecret-0123456789"


def emit_failure(log: Logger, secret: str) -> None:
    try:
        raise ValueError(f"upstream said: bad key {secret}")
    except ValueError:
        log.failure("request {what} failed", what=f"with {secret}")


def test_redactor_hides_configured_and_secret_looking_values():
    redactor = Redactor([SECRET, "short"])
    assert redactor.redact(f"key={SECRET}!") == f"key={REDACTED}!"
    assert redactor.redact("short stays: too short to be a key") == "short stays: too short to be a key"
    assert redactor.redact("Authorization: Bearer abcdefgh12345678") == f"Authorization: Bearer {REDACTED}"
    assert redactor.redact("oops sk-proj-ABCDEFGHIJKLMNOPQRSTUV") == f"oops sk-{REDACTED}"
    redactor.update(["another-secret-value"])
    assert redactor.redact("another-secret-value") == REDACTED


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("BEARER\tabcdefgh12345678 and bearer  zyxwvuts98765432", f"BEARER\t{REDACTED} and bearer  {REDACTED}"),
        ("a=1&token=sk-abcdefghijklmnop_XYZ", f"a=1&token=sk-{REDACTED}"),
        ("bearer short1 sk-tooshort Sk-abcdefghijklmnopqrs xsk-abcdefghijklmnopqrs", None),
        ("POST /api/chat 200 1.2ms id=abc model=m provider=p client=127.0.0.1", None),
    ],
)
def test_secret_shapes_are_found_in_any_case_and_nothing_else_is(text, redacted):
    # The shapes: "bearer" in any case, "sk-" as written, each followed by enough key characters.
    assert Redactor([]).redact(text) == (text if redacted is None else redacted)
    assert Redactor([SECRET]).redact(text) == (text if redacted is None else redacted)


def test_text_observer_never_sees_the_secret_even_in_a_traceback():
    out = io.StringIO()
    log = Logger(observer=redacting(textFileLogObserver(out), [SECRET]), namespace="test")
    emit_failure(log, SECRET)
    log.info("plain {value}", value=SECRET)
    log.info(f"inline {SECRET}")
    text = out.getvalue()
    assert SECRET not in text
    assert "Traceback" in text and "ValueError" in text and f"bad key {REDACTED}" in text
    assert f"request with {REDACTED} failed" in text and f"plain {REDACTED}" in text and f"inline {REDACTED}" in text


def test_json_lines_are_one_object_per_line_with_fields_and_a_redacted_traceback():
    out = io.StringIO()
    log = Logger(observer=RedactingObserver(jsonLinesObserver(out), Redactor([SECRET])), namespace="ollama_proxy.test")
    log.info("hello {name}", name="world", count=3)
    log.warn("key is {key}", key=SECRET)
    emit_failure(log, SECRET)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    assert lines[0]["message"] == "hello world" and lines[0]["name"] == "world" and lines[0]["count"] == 3
    assert (
        lines[0]["level"] == "info" and lines[0]["namespace"] == "ollama_proxy.test" and lines[0]["time"].endswith("Z")
    )
    assert lines[1]["level"] == "warn" and lines[1]["key"] == REDACTED
    assert lines[2]["level"] == "critical" and "ValueError" in lines[2]["traceback"]
    assert SECRET not in out.getvalue()


def _unwrap(observer: Any) -> Any:
    assert isinstance(observer, FilteringLogObserver)
    assert isinstance(observer._observer, RedactingObserver)
    return observer._observer.observer


def test_daemon_observer_follows_twistd_options(tmp_path):
    redactor = Redactor([SECRET])
    syslog = _unwrap(daemon_observer(log_format="json", redactor=redactor, syslog=True, prefix="proxy"))
    assert isinstance(syslog, LegacyLogObserverWrapper)
    logfile = tmp_path / "proxy.log"
    rotations: list[Any] = []
    clock = Clock()
    observer = daemon_observer(
        log_format="json",
        redactor=redactor,
        logfile=str(logfile),
        nodaemon=False,
        install_rotation=rotations.append,
        clock=clock,
    )
    assert isinstance(rotations[0], LogFile)
    Logger(observer=observer, namespace="t").info("to the file {secret}", secret=SECRET)
    clock.advance(0)  # the turn's lines are written
    rotations[0].flush()
    [line] = [json.loads(text) for text in logfile.read_text().splitlines()]
    assert line["message"] == f"to the file {REDACTED}"
    # Twisted's two lines per upstream connection are left out.
    Logger(observer=observer, namespace="twisted.web.client._HTTP11ClientFactory").info(
        "Starting factory {factory!r}", factory="f"
    )
    clock.advance(0)
    rotations[0].flush()
    assert len(logfile.read_text().splitlines()) == 1
    rotations[0].close()


@pytest.fixture
def events() -> Any:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


@pytest_twisted.ensureDeferred
async def test_an_upstream_error_echoing_the_key_reaches_neither_client_nor_log(proxy, events):
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "sim/fail-leak", "messages": [{"role": "user", "content": "x"}], "stream": False},
    )
    assert r.code == 502 and API_KEY not in r.body.decode() and "[REDACTED]" in r.json()["error"]
    observer_out = io.StringIO()
    observer = RedactingObserver(textFileLogObserver(observer_out), proxy.service.redactor)
    for event in events:
        observer(event)
    assert "upstream exploded" in observer_out.getvalue()
    assert API_KEY not in observer_out.getvalue()


@pytest_twisted.ensureDeferred
async def test_access_line_for_a_stream_carries_model_provider_ttft_and_tokens(proxy, events):
    r = await http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "google/gemini-pro:latest", "messages": [{"role": "user", "content": "a b c d"}]},
        headers={"X-Request-Id": "rid-1"},
    )
    assert r.code == 200
    [line] = [e for e in events if e.get("log_namespace") == "ollama_proxy.access" and e["request_id"] == "rid-1"]
    assert line["log_level"] == LogLevel.info
    assert (line["method"], line["path"], line["status"]) == ("POST", "/api/chat", 200)
    assert line["model"] == "google/gemini-pro:latest" and line["provider"] == "openrouter"
    assert line["tokens_in"] == 4 and line["tokens_out"] == 5
    assert line["ttft_ms"] is not None and 0 <= line["ttft_ms"] <= line["duration_ms"]
    text = io.StringIO()
    textFileLogObserver(text)(line)
    assert (
        "POST /api/chat 200" in text.getvalue()
        and "id=rid-1 model=google/gemini-pro:latest provider=openrouter" in text.getvalue()
    )
    assert "tokens_in=4 tokens_out=5 client=127.0.0.1" in text.getvalue()


@pytest_twisted.ensureDeferred
async def test_access_lines_can_be_turned_off(make_proxy, events):
    proxy = make_proxy(ops=OpsConfig(log=LogConfig(access=False)))
    assert (await http("GET", proxy.url + "/api/version", headers={"X-Request-Id": "quiet-1"})).code == 200
    assert not [e for e in events if e.get("log_namespace") == "ollama_proxy.access"]


@pytest.mark.parametrize(
    "when",
    [1764520000.0, 1764520000.25, 1764520000.9999994, 1764520000.9999996, 1764520001.5, 1764520061.0, None],
)
def test_text_lines_are_twisteds_own_with_the_stamp_made_once_a_second(when):
    from twisted.logger import FileLogObserver, LogLevel, textFileLogObserver

    from ollama_proxy.ops.logs import ClassicText

    classic = ClassicText()
    ours, twisteds = io.StringIO(), io.StringIO()
    reference = textFileLogObserver(twisteds)
    events = [
        {"log_format": "{access_text}", "access_text": "POST /api/chat 200", "log_namespace": "ollama_proxy.access"},
        {"log_format": "{a} and {b!r}", "a": 1, "b": "two", "log_system": "sys"},
        {"log_format": "multi\nline", "log_level": LogLevel.warn},
        # One text field (the access line's shape): with its level, namespace or system, or not.
        {"log_format": "{t}", "t": "GET / 200", "log_level": LogLevel.info, "log_namespace": "ollama_proxy.access"},
        {"log_format": "{t}", "t": "two\nlines", "log_level": LogLevel.error},
        {"log_format": "{t}", "t": "", "log_level": LogLevel.info, "log_namespace": "x"},
        {"log_format": "{t}", "t": "sys", "log_level": LogLevel.info, "log_system": "s", "log_namespace": "x"},
    ]
    for seconds in (0.0, 0.5, 1.0):  # the cached stamp of one second must not leak into the next
        for event in events:
            event = {**event, "log_time": None if when is None else when + seconds}
            FileLogObserver(ours, classic)(event)
            reference(event)
    assert ours.getvalue() == twisteds.getvalue()
    assert ours.getvalue().count("\n") > len(events) * 3 - 1


def test_a_one_field_format_is_that_field_and_others_are_formatted(tmp_path):
    from ollama_proxy.ops.logs import _formatted

    assert _formatted({"log_format": "{access_text}", "access_text": "a {b} c"}) == "a {b} c"
    assert _formatted({"log_format": "{n}", "n": 5}) == "5"
    assert _formatted({"log_format": "{x} {y}", "x": "1", "y": "2"}) == "1 2"
    assert _formatted({"log_format": "{f()}", "f": lambda: "called"}) == "called"


def test_the_daemons_lines_are_written_once_a_turn_and_a_warning_at_once():
    from ollama_proxy.ops.gathered import GatheredFileLogObserver

    class Out(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    out, clock = Out(), Clock()
    observer = GatheredFileLogObserver(out, lambda event: event["text"] + "\n", clock)
    for n in range(3):
        observer({"text": f"access {n}", "log_level": LogLevel.info})
    assert out.getvalue() == ""  # gathered until the turn ends
    clock.advance(0)
    assert out.getvalue() == "access 0\naccess 1\naccess 2\n" and out.writes == 1
    observer({"text": "access 3", "log_level": LogLevel.info})
    observer({"text": "trouble", "log_level": LogLevel.warn})  # at once, after what came before it
    assert out.getvalue().endswith("access 3\ntrouble\n") and out.writes == 2
    clock.advance(0)
    assert out.writes == 2  # nothing left to write
    # Many lines in a turn: written in pieces of whole lines of at most PIPE_BUF bytes, so
    # workers sharing one output never interleave mid-line.
    from ollama_proxy.ops.gathered import PIPE_BUF

    written: list[str] = []
    out.write = lambda text: written.append(text) or len(text)  # type: ignore[method-assign]
    for n in range(200):
        observer({"text": f"access {n:03d} " + "x" * 40, "log_level": LogLevel.info})
    clock.advance(0)
    assert len(written) > 1 and "".join(written).count("\n") == 200
    assert all(piece.endswith("\n") and len(piece.encode()) <= PIPE_BUF for piece in written)
    # A line from another thread (the ledger's database thread) is written at once, there.
    import threading

    written.clear()
    other = threading.Thread(target=observer, args=({"text": "from a thread", "log_level": LogLevel.info},))
    other.start()
    other.join()
    assert written == ["from a thread\n"]
    stopped = Clock()
    stopped.running = False  # type: ignore[attr-defined]  # a reactor not running: written through
    through = Out()
    GatheredFileLogObserver(through, lambda event: event["text"] + "\n", stopped)(
        {"text": "bye", "log_level": LogLevel.info}
    )
    assert through.getvalue() == "bye\n"
