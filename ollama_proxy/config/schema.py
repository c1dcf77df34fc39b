"""The configuration file, declared once.

Every key the TOML file may hold is a field of a :class:`Section` below, with its
type and range (``msgspec.Meta``) and its default. :func:`decode` checks a parsed
file against :class:`ConfigFile` in one pass: an unknown key, a wrong type or a
value out of range becomes a :class:`ConfigError` naming the key
(:mod:`ollama_proxy.config.explain` words it). What cannot be declared (a key
read from a file, two settings that exclude each other, a pin naming a provider)
is checked where the configuration is assembled (:mod:`ollama_proxy.config.settings`).

Adding a key is one line in its section plus a row in README.md's configuration
reference (``python -m ollama_proxy.config.reference`` prints the rows, and a test
checks that the README has them). Sections used as written (``[timeouts]``,
``[retry]``, ``[breaker]``, ``[limits]``, ``[log]``, ``[shutdown]``) are the very
objects the running service reads. Adding such a section is a ``Section``
subclass, a field of :class:`ConfigFile` and the same field (name and type) on
``Config`` or ``OpsConfig``: :func:`as_written` carries it over.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, get_args, get_type_hints

import msgspec

from ollama_proxy.config.explain import explain

DEFAULT_OPENROUTER_URL = "https://openrouter.ai/api/v1"
# VS Code Copilot refuses servers below 0.6.4; Open WebUI and others compare too.
DEFAULT_OLLAMA_VERSION = "0.14.3"
ProviderType = Literal["openrouter", "openai", "anthropic", "ollama", "echo"]
PROVIDER_TYPES: tuple[str, ...] = get_args(ProviderType)


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


# -- value types ------------------------------------------------------------------
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
Count = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
Strings = tuple[str, ...]
Name = Annotated[str, msgspec.Meta(min_length=1)]
Names = Annotated[
    Name | Annotated[tuple[Name, ...], msgspec.Meta(min_length=1)],
    msgspec.Meta(description="a name or a list of names"),
]
ProviderName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="a name of up to 64 characters that may hold only letters, digits, '.', '_' and '-'",
    ),
]
Workers = Annotated[
    Count | Literal["auto"], msgspec.Meta(description='a number of worker processes ≥ 1, or "auto" (one per CPU)')
]
Duration = Annotated[str | int | float, msgspec.Meta(description='a duration (seconds or a string such as "5m")')]


def default_text(text: str) -> Any:
    """Metadata for a field whose default is computed elsewhere: the README's wording of it."""
    return msgspec.Meta(extra={"default": text})


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A table of the file: unknown keys are refused, values are checked on decoding."""


# -- sections used as written ------------------------------------------------------
class Timeouts(Section, frozen=True, kw_only=True):
    """Seconds. ``connect`` bounds reaching the provider, ``response`` waiting for
    its status line and headers (and, for a request that does not stream, the
    whole answer), ``idle`` the silence allowed inside a stream."""

    connect: Positive = 10.0
    response: Positive = 120.0
    idle: Positive = 120.0


class RetryConfig(Section, frozen=True, kw_only=True):
    """Retries before the first byte reached the client. Seconds."""

    max_retries: NonNegativeInt = 2  # per provider, after the first attempt
    base_delay: Positive = 0.5  # first backoff; doubles each retry, with jitter
    max_delay: Positive = 8.0
    max_retry_after: Positive = 30.0  # a Retry-After longer than this skips to the next provider
    deadline: Positive = 60.0  # no retry on the same provider starts later than this after the request arrived


class BreakerConfig(Section, frozen=True, kw_only=True):
    """One circuit breaker per provider."""

    failure_rate: Fraction = 0.5  # open when failures / calls in the window reach this...
    window: Positive = 60.0  # ...over this many seconds...
    minimum_calls: Count = 10  # ...once at least this many calls were made
    consecutive_failures: Count = 5  # or after this many failures in a row (quiet providers)
    open_wait: Positive = 5.0  # first open period; doubles with each trip in a row
    max_open_wait: Positive = 300.0
    auth_open_wait: Positive = 600.0  # after 401/402: a long wait, then keep probing
    half_open_probes: Count = 1  # calls let through at once while half open
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2  # open periods vary by up to this fraction; 0: none


class LimitsConfig(Section, frozen=True, kw_only=True):
    """Bounds on what one client may ask of the proxy. 0 means no limit."""

    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16384
    max_streams_per_client: NonNegativeInt = 0
    max_streams: NonNegativeInt = 0
    header_timeout: Positive = 30.0  # seconds to send a request's headers (not reset by each byte)
    max_connections: Count = 4096  # open client connections; past it a new one gets 503 and is closed
    request_read_timeout: Positive = 60.0  # seconds to send a whole request, headers and body (then 408)


class LogConfig(Section, frozen=True, kw_only=True):
    """``format`` is ``text`` or ``json``; ``access`` writes one line per request."""

    format: Literal["text", "json"] = "text"
    access: bool = True


class ShutdownConfig(Section, frozen=True, kw_only=True):
    """Seconds in-flight requests may take to finish after SIGTERM."""

    drain_timeout: NonNegative = 30.0


class FilterConfig(Section, frozen=True, kw_only=True):
    """Globs matched against upstream model ids (``file`` lines merged in once loaded)."""

    allow: Annotated[Strings, default_text("every model")] = ()
    deny: Strings = ()
    file: str | None = None


class OpenRouterConfig(Section, frozen=True, kw_only=True):
    """OpenRouter, the first provider; ``OPENROUTER_API_KEY``/``_BASE_URL`` win over the file."""

    api_key: str | None = None
    base_url: str = DEFAULT_OPENROUTER_URL
    http_referer: str | None = None
    x_title: str | None = None
    priority: int = 1
    enabled: bool = True
    max_in_flight: Count = 512
    max_queue: NonNegativeInt = 512
    queue_timeout: Positive = 30.0
    max_connections: Count = 128  # idle persistent connections kept (not a concurrency cap)


class ProviderTimeouts(Section, frozen=True, kw_only=True):
    """Per-provider overrides of the global ``[timeouts]``; ``None`` keeps the global value."""

    connect: Annotated[Positive | None, default_text("[timeouts]")] = None
    response: Annotated[Positive | None, default_text("[timeouts]")] = None
    idle: Annotated[Positive | None, default_text("[timeouts]")] = None


class ProviderSettings(Section, frozen=True, kw_only=True):
    """The keys a provider table and the running provider share."""

    base_url: Annotated[str, default_text("the type's")] = ""
    priority: Annotated[int | None, default_text("10, 11, ... in file order")] = None
    enabled: bool = True
    timeouts: ProviderTimeouts = ProviderTimeouts()
    max_in_flight: Count = 512
    max_queue: NonNegativeInt = 512
    queue_timeout: Positive = 30.0
    max_connections: Annotated[Count | None, default_text("`openrouter.max_connections`")] = None
    label: Annotated[str, default_text("the name")] = ""
    max_tokens: Count = 4096  # Anthropic requires max_tokens; used when the client sets none.


class BuiltinProviderTable(ProviderSettings, frozen=True, kw_only=True):
    """``[openai]`` / ``[anthropic]``: a provider whose name and type are given."""

    key: str | None = None
    api_key: str | None = None
    key_env: str | None = None
    key_file: str | None = None
    headers: dict[str, str] = {}


class ProviderTable(BuiltinProviderTable, frozen=True, kw_only=True):
    """One ``[[providers]]`` entry."""

    name: Annotated[ProviderName | None, default_text("required")] = None
    type: Annotated[ProviderType | None, default_text("required")] = None


class TokenLimits(Section, frozen=True, kw_only=True):
    """Rate limits and budgets of one client token (``None``: no limit), counted in
    the ledger's fixed UTC windows; budgets are in ``[ledger] currency``."""

    requests_per_minute: Count | None = None
    tokens_per_minute: Count | None = None
    budget_per_day: NonNegative | None = None
    budget_per_month: NonNegative | None = None

    def __bool__(self) -> bool:
        return any(
            v is not None
            for v in (self.requests_per_minute, self.tokens_per_minute, self.budget_per_day, self.budget_per_month)
        )


class TokenTable(TokenLimits, frozen=True, kw_only=True):
    """One ``[[auth.tokens]]`` entry: a digest or a credential's name, never a plain
    token; its limits (:class:`TokenLimits`) are keys of the same table."""

    sha256: str | None = None
    credential: str | None = None
    name: Annotated[str | None, default_text('"token-" and 8 digits of the digest')] = None
    models: Annotated[Strings, default_text("every model")] = ()
    admin: bool = False  # GET /api/usage shows it every token's usage, not only its own


class AuthTable(Section, frozen=True, kw_only=True):
    """``[auth]``: tokens here, in ``tokens_file`` and in the ``client_tokens`` credential."""

    enabled: Annotated[bool | None, default_text("true when a token is configured")] = None
    tokens: tuple[TokenTable, ...] = ()
    tokens_file: str | None = None
    # Limits for every token that sets none of its own (anonymous included when auth is off).
    default_limits: TokenLimits | None = None


class CorsTable(Section, frozen=True, kw_only=True):
    """``[cors]``: origins added to Ollama's own and ``OLLAMA_ORIGINS``."""

    origins: Strings = ()


class RefreshTable(Section, frozen=True, kw_only=True):
    """``[refresh]``: seconds between model list refreshes and health checks."""

    models_interval: Positive = 300.0
    health_interval: Positive = 60.0


class LedgerConfig(Section, frozen=True, kw_only=True):
    """``[ledger]``: the usage ledger (the table's presence turns it on)."""

    enabled: bool = True
    # sqlite:///PATH or postgresql://USER@HOST/DB; resolved to a path when loaded.
    url: Annotated[str | None, default_text("ledger.sqlite3 in the state directory")] = None
    keep_days: NonNegative = 365.0  # rows older than this are deleted (hourly); 0 keeps them all
    flush_interval: Positive = 1.0  # seconds between batched writes (and reads of the shared totals)
    max_queue: Count = 100_000  # rows kept in memory while the database is unreachable
    currency: Annotated[str, msgspec.Meta(min_length=1)] = "USD"


class PriceTable(Section, frozen=True, kw_only=True):
    """One ``[prices."MODEL"]`` entry: the ledger's currency per million tokens."""

    prompt: NonNegative
    completion: NonNegative = 0.0


class ConfigFile(Section, frozen=True, kw_only=True):
    """The whole file, in the order README.md's reference lists it."""

    environment: Annotated[str | None, default_text('"production"')] = None
    ollama_version: str = DEFAULT_OLLAMA_VERSION
    max_body_bytes: PositiveInt = 32 * 1024 * 1024
    listen: Annotated[Strings, default_text('["tcp:11434:interface=127.0.0.1"]')] = ()
    workers: Workers = 1
    keep_alive: Annotated[Duration | None, default_text('"5m"')] = None
    timeouts: Timeouts = Timeouts()
    refresh: RefreshTable = RefreshTable()
    filter: FilterConfig = FilterConfig()
    openrouter: OpenRouterConfig = OpenRouterConfig()
    providers: tuple[ProviderTable, ...] = ()
    openai: Annotated[BuiltinProviderTable | None, default_text("none, or `OPENAI_API_KEY`")] = None
    anthropic: Annotated[BuiltinProviderTable | None, default_text("none, or `ANTHROPIC_API_KEY`")] = None
    aliases: dict[str, Annotated[Name, msgspec.Meta(description="a model name")]] = {}
    pins: dict[str, Names] = {}
    fallbacks: dict[str, Names] = {}
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    auth: AuthTable = AuthTable()
    cors: CorsTable = CorsTable()
    limits: LimitsConfig = LimitsConfig()
    log: LogConfig = LogConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    ledger: LedgerConfig | None = None
    prices: dict[str, PriceTable] = {}


@functools.cache
def _shared_fields(target: type) -> tuple[str, ...]:
    theirs, ours = get_type_hints(target), get_type_hints(ConfigFile)
    return tuple(name for name, kind in theirs.items() if ours.get(name) == kind)


def as_written(target: type, file: ConfigFile) -> dict[str, Any]:
    """The parts of ``file`` that ``target`` (``Config``, ``OpsConfig``) holds as declared.

    A field of ``target`` with the name and type of a field of :class:`ConfigFile`
    is taken from the file unchanged, so a new section the service reads as
    written needs no code: its Struct, a field here, the same field on ``target``.
    """
    return {name: getattr(file, name) for name in _shared_fields(target)}


def decode(table: dict[str, Any]) -> ConfigFile:
    """A parsed TOML table as a :class:`ConfigFile`, or a :class:`ConfigError` naming the key."""
    try:
        return msgspec.convert(table, ConfigFile)
    except msgspec.ValidationError as error:
        raise ConfigError(explain(error, table, ConfigFile)) from None
