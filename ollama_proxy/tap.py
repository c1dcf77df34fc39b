"""``twistd ollama-proxy``: command-line options and the service maker.

The service is a :class:`~ollama_proxy.ops.daemon.DaemonService`: the proxy plus
SIGHUP reload, graceful SIGTERM, sd_notify and the log observer twistd uses
(which honours twistd's ``--logfile``, ``--syslog`` and ``--prefix``).
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - imported lazily by str.encode("idna"): too late after --uid or --chroot
import functools
import os
import signal
import sys
from typing import Any

from twisted.python import usage

from ollama_proxy.config.settings import ConfigError, load_config
from ollama_proxy.ops import workermode
from ollama_proxy.ops.daemon import DaemonService, freeze_startup_heap
from ollama_proxy.ops.logs import daemon_observer
from ollama_proxy.ops.redaction import Redactor
from ollama_proxy.ops.workers import worker_count


class Options(usage.Options):
    """Options of ``twistd ollama-proxy``."""

    synopsis = "[--listen ENDPOINT]... [--config FILE] [--log-format text|json] [--demo]"
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: $OLLAMA_PROXY_CONFIG)."],
        ["log-format", None, None, "Log lines as 'text' or 'json' (default: [log] format in the config, else text)."],
        [
            "workers",
            "w",
            None,
            "Worker processes: a number, or 'auto' for one per CPU (default: workers in the config, else 1).",
        ],
        ["worker", None, None, "(internal) run as worker I/N of a main process started with --workers."],
    ]
    optFlags = [
        ["demo", None, "Add the built-in 'echo' provider: demo models that answer offline, deterministically."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Twisted server endpoint to listen on; may be repeated
        (default: $OLLAMA_HOST, else tcp:11434:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        if self["log-format"] not in (None, "text", "json"):
            raise usage.UsageError("--log-format must be 'text' or 'json'")


def _rotate_on_usr1(reactor: Any) -> Any:
    """Rotate the log file on SIGUSR1, as twistd does for its own log file."""

    def install(logfile: Any) -> None:
        if not signal.getsignal(signal.SIGUSR1):
            signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(logfile.rotate))

    return install


def observer_for(twistd: Any, log_format: str | None, config: Any, redactor: Any, reactor: Any) -> Any:
    """The redacting log observer for twistd's options (``--logfile``, ``--syslog``, ``-n``)."""
    return daemon_observer(
        log_format=log_format or config.ops.log.format,
        redactor=redactor,
        logfile=twistd.get("logfile"),
        syslog=bool(twistd.get("syslog")),
        prefix=twistd.get("prefix") or "ollama-proxy",
        nodaemon=bool(twistd.get("nodaemon")),
        install_rotation=_rotate_on_usr1(reactor),
        clock=reactor,
    )


def _twistd_options(argv: list[str] | None) -> Any:
    """twistd's options read from the command line the way twistd read them (a .tac file
    is not given them)."""
    from twisted.scripts.twistd import ServerOptions

    twistd = ServerOptions()
    try:
        twistd.parseOptions((argv if argv is not None else sys.argv)[1:])
    except usage.UsageError:
        return {"nodaemon": True}
    return twistd


def tac_observer(config: Any, redactor: Any, reactor: Any, argv: list[str] | None = None) -> Any:
    """For ``proxy.tac``: log as the plugin does, for the options twistd was given."""
    twistd = _twistd_options(argv)
    return observer_for(twistd, os.environ.get("OLLAMA_PROXY_LOG_FORMAT"), config, redactor, reactor)


def tac_foreground(argv: list[str] | None = None) -> bool:
    """For ``proxy.tac``: whether twistd runs in the foreground (``-n``), which decides how
    a start-up failure is reported (see :class:`~ollama_proxy.ops.daemon.DaemonService`)."""
    return bool(_twistd_options(argv).get("nodaemon"))


def makeService(options: Any) -> Any:
    # The same loader serves start-up and every SIGHUP reload (so --demo survives a reload).
    load = functools.partial(
        load_config, config_file=options["config"], listen=options["listen"], demo=bool(options["demo"])
    )
    try:
        config = load()
    except ConfigError as error:
        # twistd shows a traceback for exceptions; an operator wants one clear line.
        sys.stderr.write(f"ollama-proxy: configuration error: {error}\n")
        raise SystemExit(1) from None
    from twisted.internet import reactor  # the entry point: the one place that picks the reactor

    reactor.callWhenRunning(freeze_startup_heap)

    twistd = getattr(options, "parent", None)
    if options["worker"]:
        observer = (
            observer_for(twistd, options["log-format"], config, Redactor(config.secrets()), reactor)
            if twistd is not None
            else None
        )
        return workermode.worker_service(options, load, reactor, observer)
    try:
        count = worker_count(options["workers"] if options["workers"] is not None else config.workers)
    except ValueError:
        sys.stderr.write(f"ollama-proxy: --workers must be a number or 'auto', not {options['workers']!r}\n")
        raise SystemExit(1) from None
    if count > 1:
        main = workermode.main_service(options, config, load, reactor, count)
        if twistd is not None:
            main.log_observer = observer_for(twistd, options["log-format"], config, Redactor(config.secrets()), reactor)
        return main

    # Imported here, not at the top: the main process of workers never serves a request, and
    # without the application (Klein, treq, the routes, metrics) it holds less memory.
    from ollama_proxy.service import makeService as build

    proxy = build(config, reactor)
    observer = None
    if twistd is not None:
        observer = observer_for(twistd, options["log-format"], config, proxy.redactor, reactor)
    foreground = twistd is None or bool(twistd.get("nodaemon"))
    return DaemonService(proxy, reactor, load, log_observer=observer, foreground=foreground)
