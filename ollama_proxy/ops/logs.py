"""Logging: readable text or JSON lines, one access line per request, secrets blotted out.

The daemon's log observer is built here (:func:`daemon_observer`) and handed to
twistd as the application's ``ILogObserver``, so it honours ``--logfile``,
``--syslog`` and ``--prefix`` the way twistd's own observer does. Every event
goes through a :class:`RedactingObserver` first: configured secrets (API keys)
and anything that looks like a bearer token or an API key are replaced in the
message, its fields and its traceback before anything is written.
A program that embeds the proxy wraps its own observer with
:func:`redacting` to get the same protection.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import IO, Any, cast

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LegacyLogObserverWrapper,
    Logger,
    LogLevel,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from ollama_proxy.front.record import RequestRecord
from ollama_proxy.ops.gathered import GatheredFileLogObserver
from ollama_proxy.ops.redaction import Redactor

access_log = Logger(namespace="ollama_proxy.access")


class _RedactedFailure(Failure):
    """A failure whose rendered traceback has already been redacted."""

    def __init__(self, original: Failure, redactor: Redactor) -> None:  # noqa: D107 - no Failure.__init__: no live traceback
        self.__dict__.update(original.__dict__)
        self._redacted_traceback = redactor.redact(original.getTraceback())
        self._redacted_message = redactor.redact(original.getErrorMessage())
        self.value = RuntimeError(self._redacted_message)  # the original message may hold the secret
        self.type = original.type

    def getTraceback(self, elideFrameworkCode: int = 0, detail: str = "default") -> str:  # noqa: N802 - Twisted's name
        return self._redacted_traceback

    def printTraceback(self, file: Any = None, elideFrameworkCode: bool = False, detail: str = "default") -> None:  # noqa: N802
        (file or sys.stderr).write(self._redacted_traceback)

    def getErrorMessage(self) -> str:  # noqa: N802
        return self._redacted_message


# Keys of an event that hold Twisted's bookkeeping, not text worth redacting.
_KEEP = {
    "log_logger",
    "log_source",
    "log_level",
    "log_namespace",
    "log_time",
    "log_observer",
    "log_trace",
    "log_io",
    "log_system",
}
_KEEP_ORDER = tuple(sorted(_KEEP))


# What must not reach a text line raw: C0 and C1 controls, DEL, Unicode line breaks
# (a client's "\n2026-... POST /api/chat 200" would forge a line), and lone surrogates
# (which a UTF-8 log file cannot hold).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNSAFE_KEEPING_NEWLINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_text(text: str, keep_newlines: bool = False) -> str:
    """``text`` with control characters (CR, LF and the rest) and lone surrogates
    written as escapes, so it stays on its one log line."""
    unsafe = _UNSAFE_KEEPING_NEWLINES if keep_newlines else _UNSAFE
    return unsafe.sub(_escape_char, text) if unsafe.search(text) else text


def _escaped(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with every text field escaped for a text line; the format (the
    program's own) is left alone, and so are a legacy event's rendered text's line
    breaks (a traceback; Twisted indents its continuation lines)."""
    escaped = dict(event)
    for key, value in event.items():
        if key == "log_text" and isinstance(value, str):
            escaped[key] = escape_text(value, keep_newlines=True)
        elif key.startswith("log_"):
            continue
        elif isinstance(value, str):
            escaped[key] = escape_text(value)
        elif isinstance(value, BaseException):
            escaped[key] = escape_text(f"{type(value).__name__}: {value}")
    return escaped


@implementer(ILogObserver)
class RedactingObserver:
    """Passes a redacted copy of every event to ``observer``; with ``escape`` (text
    lines, syslog), its fields' control characters escaped first."""

    def __init__(self, observer: ILogObserver, redactor: Redactor, escape: bool = False) -> None:
        self.observer = observer
        self.redactor = redactor
        self.escape = escape

    def __call__(self, event: dict[str, Any]) -> None:
        if self.escape:
            one = _one_text_field(event)
            if one is not None:
                # A text line of one field (the access line): only that field is written,
                # so only it is escaped and redacted; the other fields (there for the JSON
                # lines) are left out. The whole copy was most of an access line's cost.
                clean = {key: event[key] for key in _KEEP_ORDER if key in event}
                clean["log_format"] = event["log_format"]
                clean[one] = self.redactor.redact(escape_text(event[one]))
                self.observer(clean)
                return
            event = _escaped(event)
        clean = {}
        for key, value in event.items():
            if key in _KEEP:
                clean[key] = value
            elif key == "log_failure" and isinstance(value, Failure):
                clean[key] = _RedactedFailure(value, self.redactor)
            elif key == "log_format" and isinstance(value, str):
                clean[key] = self.redactor.redact(value)
            else:
                clean[key] = self.redactor.redact_value(value)
        if "log_format" in event and "log_text" not in event:
            # Render once with the original fields, then redact the text: a secret
            # assembled from several fields is still caught.
            text = _formatted(event)
            if self.redactor.found_in(text):
                clean["log_format"] = "{log_text}"
                clean["log_text"] = self.redactor.redact(text)
        self.observer(clean)


# A format that is one field, as the access line's "{access_text}" is.
_ONE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _one_text_field(event: dict[str, Any]) -> str | None:
    """The field's name when ``event``'s text is one text field and nothing else (no
    failure, no legacy text); ``None`` otherwise."""
    log_format = event.get("log_format")
    if type(log_format) is not str or "log_failure" in event or "log_text" in event:
        return None
    name = _field_of_format(log_format)
    if name is None or type(event.get(name)) is not str:
        return None
    return name


@lru_cache(maxsize=256)
def _field_of_format(log_format: str) -> str | None:
    # A pure function of the format, which is the program's own text: kept (bounded).
    match = _ONE_FIELD.fullmatch(log_format)
    return None if match is None or match.group(1).startswith("log_") else match.group(1)


def _formatted(event: dict[str, Any]) -> str:
    """``formatEvent(event)``; a format that is one text field is that text, without a trip
    through ``string.Formatter`` (once per access line: about 1 % of a request's CPU)."""
    match = _ONE_FIELD.fullmatch(event["log_format"]) if isinstance(event.get("log_format"), str) else None
    if match is not None:
        value = event.get(match.group(1))
        if type(value) is str:
            return value
    return formatEvent(event)


class ClassicText:
    """Twisted's text line (``textFileLogObserver``'s: time, ``[system]``, message), with the
    time stamp made once a second instead of once a line (a time zone lookup and
    ``strftime`` per access line were 1.7 % of a request's CPU)."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._stamp = ""

    def time(self, when: float | None) -> str:
        """``formatTime(when)``: the stamp has whole seconds, so one second shares it."""
        if when is None:
            return formatTime(when)
        second = int(when)
        if when - second >= 0.9999995:  # datetime rounds it up to the next second
            return formatTime(when)
        if second != self._second:
            self._stamp = formatTime(second)
            self._second = second
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> str | None:
        one = _one_text_field(event)
        level = event.get("log_level")
        if one is not None and "log_system" not in event and level is not None and event[one]:
            # The access line (a format that is one text field): Twisted's line, put
            # together here instead of through its general formatting (a tenth of the
            # line's cost). Anything else goes the general way.
            namespace = event.get("log_namespace", "-")
            line = f"{self.time(event.get('log_time'))} [{namespace}#{level.name}] {event[one]}"
            return line.replace("\n", "\n\t") + "\n"
        return formatEventAsClassicLogText(event, formatTime=self.time)


def redacting(observer: ILogObserver, secrets: Iterable[str]) -> RedactingObserver:
    """Wrap an observer so that ``secrets`` never reach it (for embedding programs)."""
    return RedactingObserver(observer, Redactor(secrets))


# -- JSON lines -----------------------------------------------------------------------
# Keys of events from twisted.python.log that the message already renders.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_LEGACY_KEYS = frozenset({"message", "format", "system", "time", "isError", "why", "failure"})


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def event_as_json(event: dict[str, Any]) -> str:
    """One event as one JSON object: time, level, namespace, message, its own fields."""
    level = event.get("log_level")
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if when
        else None,
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace") or event.get("system") or "-",
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key.endswith("_text") or key in _LEGACY_KEYS:
            continue
        record.setdefault(key, _plain(value))
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["traceback"] = failure.getTraceback()
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    if _LONE_SURROGATE.search(line):
        # A UTF-8 log cannot hold one: escaped, the line stays valid JSON.
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    return line + "\n"


def jsonLinesObserver(out: IO[str]) -> FileLogObserver:  # noqa: N802 - named like Twisted's textFileLogObserver
    """An observer writing one JSON object per line to ``out``."""
    return FileLogObserver(out, event_as_json)


# -- the daemon's observer ------------------------------------------------------------
@provider(ILogFilterPredicate)
def _not_noise(event: dict[str, Any]) -> PredicateResult:
    """Drop Twisted's "Starting factory"/"Stopping factory" lines for every upstream
    connection: two lines per request tell an operator nothing."""
    if (
        event.get("log_level") == LogLevel.info
        and str(event.get("log_namespace", "")).startswith("twisted.web.client")
        and str(event.get("log_format", "")).startswith(("Starting factory", "Stopping factory"))
    ):
        return PredicateResult.no
    return PredicateResult.maybe


def daemon_observer(
    *,
    log_format: str,
    redactor: Redactor,
    logfile: str | None = None,
    syslog: bool = False,
    prefix: str = "ollama-proxy",
    nodaemon: bool = True,
    install_rotation: Callable[[Any], None] | None = None,
    clock: Any = None,
) -> ILogObserver:
    """What twistd's own observer would be for these options, in ``log_format``, redacted.

    ``--syslog`` keeps text (syslog lines carry their own time and level);
    ``--logfile -`` and ``-n`` without ``--logfile`` write to stdout, which is
    what journald collects under systemd. Lines are written once per turn of ``clock``
    (the reactor; see :mod:`ollama_proxy.ops.gathered`).
    """
    if syslog:
        from twisted.python import syslog as twisted_syslog

        # Twisted annotates the legacy observer it wraps as an ILogObserver; what it takes is any
        # callable of the legacy event dict, as SyslogObserver.emit is.
        from twisted.python.log import ILogObserver as ILegacyLogObserver

        legacy = cast(ILegacyLogObserver, twisted_syslog.SyslogObserver(prefix).emit)
        inner: ILogObserver = LegacyLogObserverWrapper(legacy)
        return FilteringLogObserver(RedactingObserver(inner, redactor, escape=True), [_not_noise])
    out: IO[str]
    if logfile == "-" or (nodaemon and not logfile):
        out = sys.stdout
    else:
        from twisted.python.logfile import LogFile

        out = LogFile.fromFullPath(logfile or "twistd.log")
        if install_rotation is not None:
            install_rotation(out)
    text = log_format != "json"
    if clock is None:
        from twisted.internet import reactor as clock
    inner = GatheredFileLogObserver(out, ClassicText() if text else event_as_json, clock)
    # The noise is dropped before the redacting copy is made: one "Stopping factory" line per
    # upstream connection, escaped and redacted to be thrown away, was a fifth of closing it.
    return FilteringLogObserver(RedactingObserver(inner, redactor, escape=text), [_not_noise])


# -- access lines ---------------------------------------------------------------------
def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def log_access(record: RequestRecord) -> None:
    """The access line for one finished request (structured: JSON lines keep every field)."""
    principal = getattr(record.principal, "name", None)
    duration_ms = _ms(record.duration)
    ttft_ms = _ms(record.ttft)
    # The line is written here once, by an f-string: Twisted's formatting of an eleven
    # field format string (string.Formatter) cost more than the rest of the logging.
    # Fields ending in ``_text`` stay out of the JSON lines, which keep every field.
    access_text = (
        f"{record.method} {record.path} {record.status} {duration_ms}ms id={record.request_id}"
        f" model={record.model or '-'} provider={record.provider or '-'}"
        f" ttft_ms={ttft_ms if ttft_ms is not None else '-'}"
        f" tokens_in={record.tokens_in if record.tokens_in is not None else '-'}"
        f" tokens_out={record.tokens_out if record.tokens_out is not None else '-'} client={record.client}"
    )
    access_log.info(
        "{access_text}",
        access_text=access_text,
        request_id=record.request_id,
        method=record.method,
        path=record.path,
        status=record.status,
        model=record.model,
        provider=record.provider,
        duration_ms=duration_ms,
        ttft_ms=ttft_ms,
        upstream_ms=_ms(record.upstream_seconds) if record.upstream_seconds else None,
        tokens_in=record.tokens_in,
        tokens_out=record.tokens_out,
        client=record.client,
        principal=principal,
        stream_failed=record.failed or None,
    )
