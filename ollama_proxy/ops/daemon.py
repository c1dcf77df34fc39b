"""What only a system daemon does, around the embeddable :class:`ProxyService`.

``twistd ollama-proxy`` (and ``proxy.tac``) run a :class:`DaemonService`:

- systemd hears ``READY=1`` once the listeners are bound, ``RELOADING=1`` /
  ``READY=1`` around a reload, ``STOPPING=1`` at shutdown, and ``WATCHDOG=1``
  pings while it runs (:mod:`ollama_proxy.ops.sdnotify`);
- SIGHUP re-reads the configuration: a valid file is applied to the running
  tree, an invalid one is refused with a log line and the old one stays;
- SIGTERM drains (see :mod:`ollama_proxy.front.lifecycle`) and the process exits 0,
  since a drained shutdown is a success; a second SIGTERM cuts what is left
  at once;
- the application's log observer (text or JSON lines, redacted) is handed to
  twistd, so ``--logfile``, ``--syslog`` and ``--prefix`` keep working.

A program that embeds the proxy uses the ProxyService directly and keeps its
own signals and logging.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from ollama_proxy.config.settings import Config, ConfigError
from ollama_proxy.ops.sdnotify import SystemdNotifier

if TYPE_CHECKING:  # the main process of workers imports this module and never the application
    from ollama_proxy.service import ProxyService

log = Logger()


YOUNG_COLLECTION_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Keep the cyclic garbage collector away from what start-up built (modules, classes,
    configuration: about 90,000 objects that live as long as the process).

    Every full collection walked all of them: under load a quarter of the daemon's CPU
    went to the collector (measured with gc callbacks, non-streamed ``/api/chat`` at c64
    against nginx: 2.7 of 10.7 CPU seconds; 0.7 of 6.3 with this). ``gc.freeze`` moves
    them to a generation the collector never scans; garbage made later is collected as
    before. twistd's entry point calls this once the reactor runs.

    The youngest generation is collected every :data:`YOUNG_COLLECTION_THRESHOLD`
    allocations instead of Python's 700: at 700, under load, the objects of the requests
    in flight were found alive by one young collection after another and carried into
    the older generations, whose collections then walked them again (collector time with
    wrk c64 on ``/api/chat``: 0.76 s per run at 700, 0.57 s at 5,000, 0.41 s at 20,000;
    at most this many objects' worth of cyclic garbage, about a megabyte, waits longer).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do (twistd's parent shows it)."""


def _quiet_about_startup_errors(previous: Callable[..., Any]) -> Callable[..., Any]:
    """``sys.excepthook`` that prints nothing for a :class:`StartupError` (already logged)."""

    def hook(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        if not isinstance(value, StartupError):
            previous(kind, value, traceback)

    return hook


def cannot_listen_message(error: CannotListenError) -> str:
    """One line for an address the proxy cannot bind: which, why, and what to do."""
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    where = f"{error.interface or '0.0.0.0'}:{error.port}"
    if getattr(error.socketError, "errno", None) == errno.EADDRINUSE:
        hint = "another server (a running Ollama?) holds it"
    else:
        hint = "the address cannot be used"
    return (
        f"cannot listen on {where}: {reason}; {hint}. Choose another address with --listen "
        f"(e.g. --listen tcp:11435:interface=127.0.0.1) or OLLAMA_HOST (e.g. OLLAMA_HOST=127.0.0.1:11435)"
    )


class DaemonService(MultiService):
    """A :class:`ProxyService` run as a system daemon (signals, sd_notify, logs)."""

    def __init__(
        self,
        proxy: ProxyService,
        reactor: Any,
        load_config: Callable[[], Config],
        *,
        notifier: SystemdNotifier | None = None,
        log_observer: ILogObserver | None = None,
        handle_signals: bool = True,
        foreground: bool = True,
    ) -> None:
        super().__init__()
        self.proxy = proxy
        # twistd -n: a bind failure ends the process here; daemonized, twistd's parent reports it.
        self.foreground = foreground
        self.reactor = reactor
        self._load_config = load_config
        self.notifier = notifier or SystemdNotifier(reactor)
        self.log_observer = log_observer
        self.handle_signals = handle_signals
        self.stopping = False
        self._previous_handlers: dict[int, Any] = {}
        proxy.setServiceParent(self)
        self.notifier.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        # twistd hands over the Application itself, before it starts logging: the
        # observer set here is the one twistd installs.
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    # -- start ----------------------------------------------------------------------
    def privilegedStartService(self) -> None:
        # twistd binds here, before --uid/--gid shed privileges.
        with self._explaining_bind_failures():
            super().privilegedStartService()

    def startService(self) -> None:
        self.stopping = False
        with self._explaining_bind_failures():
            super().startService()
        if self.handle_signals:
            self._trap(signal.SIGHUP, self.reload)
            # After the reactor installed its own SIGTERM handler, which would make
            # twistd re-raise the signal at exit instead of exiting 0.
            self.reactor.callWhenRunning(self._trap, signal.SIGTERM, self.terminate)
        self.reactor.callWhenRunning(self._announce)

    @contextlib.contextmanager
    def _explaining_bind_failures(self) -> Iterator[None]:
        """A busy or forbidden address: one line that says what to do, exit status 1, no traceback."""
        try:
            yield
        except CannotListenError as error:
            message = cannot_listen_message(error)
            log.critical("{message}", message=message)
            if self.foreground:
                raise SystemExit(1) from None
            # twistd's parent shows about 60 characters of it: the address and the reason.
            # The daemonized child then dies of it, and Python would print its traceback
            # into the log below the line just written: the interpreter's hook stays quiet
            # for this one exception.
            sys.excepthook = _quiet_about_startup_errors(sys.excepthook)
            raise StartupError(message.split(";")[0]) from None

    def _announce(self) -> None:
        addresses = []
        for port in self.proxy.listening_ports():
            host = port.getHost()
            addresses.append(
                f"{getattr(host, 'host', host)}:{getattr(host, 'port', '')}"
                if hasattr(host, "port")
                else str(getattr(host, "name", host))
            )
        status = "listening on " + ", ".join(addresses) if addresses else "running (no listener of its own)"
        log.info("ready: {status}", status=status)
        self.notifier.ready(status)

    def _trap(self, signum: int, handler: Callable[[], Any]) -> None:
        if not self.running or signum in self._previous_handlers:
            return
        self._previous_handlers[signum] = signal.signal(signum, lambda *_: self.reactor.callFromThread(handler))

    def _restore_signals(self) -> None:
        handlers, self._previous_handlers = self._previous_handlers, {}
        for signum, previous in handlers.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    # -- reload ---------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the configuration and apply it; False (and the old one kept) when invalid."""
        if self.stopping:
            return False
        self.notifier.reloading()
        try:
            config = self._load_config()
        except Exception as error:  # noqa: BLE001 - ConfigError, or a file that cannot be read at all
            if not isinstance(error, ConfigError):
                log.failure("reading the configuration failed")
            log.error("configuration reload refused, keeping the running configuration: {error}", error=str(error))
            self.proxy.metrics.reloads.labels("refused").inc()
            self.notifier.ready(f"reload refused: {error}")
            return False
        try:
            self.proxy.reconfigure(config)
        except Exception:  # noqa: BLE001 - a reload must not take the daemon down
            log.failure("applying the reloaded configuration failed")
            self.proxy.metrics.reloads.labels("failed").inc()
            self.notifier.ready("reload failed; see the log")
            return False
        self.proxy.metrics.reloads.labels("ok").inc()
        log.info("configuration reloaded from {path}", path=config.config_file or "the environment")
        self.notifier.ready("configuration reloaded")
        return True

    # -- stop -----------------------------------------------------------------------
    def terminate(self) -> None:
        """SIGTERM: stop gracefully; a second one cuts the requests still draining."""
        if self.stopping:
            self.proxy.lifecycle.cut_all("the server is shutting down now")
            return
        self.stopping = True
        with contextlib.suppress(Exception):  # the reactor was already stopping
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        self.stopping = True
        in_flight = self.proxy.lifecycle.in_flight
        self.notifier.stopping(f"draining {in_flight} requests" if in_flight else "stopping")
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        try:
            # The watchdog keeps pinging while the proxy drains; it stops last.
            await self.proxy.stopService()
        finally:
            Service.stopService(self)
            self.notifier.stopService()
            self._restore_signals()
        log.info("stopped")
