"""``twistd ollama-proxy --workers N``: the main process's service and each worker's.

The main process runs a :class:`MainService` (the :class:`~ollama_proxy.ops.workers.Supervisor`,
sd_notify, signals); each worker runs ``twistd ollama-proxy --worker I/N``, an ordinary
:class:`~ollama_proxy.ops.daemon.DaemonService` without listeners of its own, fed
connections by the main process (:mod:`ollama_proxy.front.handover`) and serving its
siblings the local views on a private Unix socket (:mod:`ollama_proxy.ops.aggregate`).

Limits hold for the whole, not per worker: every count the operator sets
(a provider's ``max_in_flight`` and ``max_queue``, ``[limits] max_streams`` and
``max_streams_per_client``) is split between the workers, worker I getting
``L // N`` plus one of the remainder, so together they never admit more than ``L``
(a request can be refused by a full worker while another has room). A limit below
the number of workers cannot be split: each worker then keeps 1 and start-up says so.
Circuit breakers are per worker: each learns from its own requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from ollama_proxy.config.settings import Config, ConfigError
from ollama_proxy.ops.sdnotify import SystemdNotifier
from ollama_proxy.ops.workers import Supervisor, twistd_spawner, worker_environment

log = Logger()

RUNTIME_ENV = "OLLAMA_PROXY_WORKER_DIR"  # the main process's directory for its workers


def _replace(obj: Any, **changes: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    import msgspec

    return msgspec.structs.replace(obj, **changes)


def share(limit: int, index: int, count: int) -> int:
    """Worker ``index``'s part of ``limit`` (0 means no limit and stays 0)."""
    if limit <= 0 or count <= 1:
        return limit
    return max(1, limit // count + (1 if index < limit % count else 0))


def for_worker(config: Config, index: int, count: int) -> Config:
    """``config`` as worker ``index`` of ``count`` applies it: no listeners, limits split."""
    providers = tuple(
        _replace(p, max_in_flight=share(p.max_in_flight, index, count), max_queue=share(p.max_queue, index, count))
        for p in config.providers
    )
    openrouter = _replace(
        config.openrouter,
        max_in_flight=share(config.openrouter.max_in_flight, index, count),
        max_queue=share(config.openrouter.max_queue, index, count),
    )
    limits = config.ops.limits
    limits = _replace(
        limits,
        max_streams=share(limits.max_streams, index, count),
        max_streams_per_client=share(limits.max_streams_per_client, index, count),
    )
    ops = _replace(config.ops, limits=limits)
    return _replace(config, listen=(), providers=providers, openrouter=openrouter, ops=ops)


def unsplittable(config: Config, count: int) -> list[str]:
    """The limits smaller than the number of workers (each worker keeps 1 of them)."""
    found = []
    for p in config.providers:
        if 0 < p.max_in_flight < count:
            found.append(f"{p.name}.max_in_flight = {p.max_in_flight}")
    if 0 < config.openrouter.max_in_flight < count:
        found.append(f"openrouter.max_in_flight = {config.openrouter.max_in_flight}")
    limits = config.ops.limits
    for name in ("max_streams", "max_streams_per_client"):
        if 0 < getattr(limits, name) < count:
            found.append(f"limits.{name} = {getattr(limits, name)}")
    return found


def parse_worker(value: str) -> tuple[int, int]:
    """``--worker I/N`` as (I, N)."""
    index, _, count = value.partition("/")
    return int(index), int(count)


class MainService(MultiService):
    """The main process in worker mode: supervisor, systemd, signals."""

    def __init__(
        self,
        supervisor: Supervisor,
        reactor: Any,
        load_config: Callable[[], Config],
        runtime_dir: str,
        notifier: SystemdNotifier | None = None,
        handle_signals: bool = True,
    ) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.reactor = reactor
        self._load_config = load_config
        self.runtime_dir = runtime_dir
        self.notifier = notifier or SystemdNotifier(reactor, alive=lambda: supervisor.alive)
        self.handle_signals = handle_signals
        self.stopping = False
        supervisor.on_ready = self.notifier.ready
        supervisor.setServiceParent(self)
        self.notifier.setServiceParent(self)

    log_observer: Any = None

    def setServiceParent(self, parent: Any) -> None:
        # As DaemonService does: the observer set on the Application is the one twistd installs.
        from twisted.logger import ILogObserver
        from twisted.python.components import Componentized

        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        if self.handle_signals:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
            self.reactor.callWhenRunning(
                signal.signal, signal.SIGTERM, lambda *_: self.reactor.callFromThread(self.terminate)
            )

    def reload(self) -> bool:
        """Check the file here first: one every worker would refuse is refused once, for all."""
        try:
            self._load_config()
        except Exception as error:  # noqa: BLE001 - ConfigError, or a file that cannot be read
            if not isinstance(error, ConfigError):
                log.failure("reading the configuration failed")
            log.error("configuration reload refused for every worker: {error}", error=str(error))
            return False
        self.notifier.reloading()
        sent = self.supervisor.signal_workers(signal.SIGHUP)
        log.info("configuration reload sent to {sent} workers", sent=sent)
        self.notifier.ready("configuration reloaded")
        return True

    def terminate(self) -> None:
        if self.stopping:
            self.supervisor.signal_workers(signal.SIGTERM)  # a second SIGTERM: they cut what is left
            return
        self.stopping = True
        with contextlib.suppress(Exception):  # already stopping
            self.reactor.stop()

    def stopService(self) -> Any:
        self.stopping = True
        self.notifier.stopping("draining the workers")
        d = self.supervisor.stopService()

        def done(result: Any) -> Any:
            self.notifier.stopService()
            MultiService.stopService(self)
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            log.info("stopped")
            return result

        return d.addBoth(done)


def main_service(options: Any, config: Config, load: Callable[[], Config], reactor: Any, count: int) -> MainService:
    """The main process's service for ``twistd ollama-proxy --workers N``."""
    for limit in unsplittable(config, count):
        log.warn("{limit} is below {count} workers: each worker allows 1", limit=limit, count=count)
    runtime = tempfile.mkdtemp(prefix="ollama-proxy-workers-")
    os.mkdir(os.path.join(runtime, "metrics"))
    env = worker_environment(dict(os.environ), os.path.join(runtime, "metrics"))
    env[RUNTIME_ENV] = runtime
    argv = worker_argv(options, count)
    supervisor = Supervisor(
        count,
        config.listen,
        twistd_spawner(reactor, argv, env),
        reactor,
        drain_timeout=config.ops.shutdown.drain_timeout,
    )
    return MainService(supervisor, reactor, load, runtime)


def worker_argv(options: Any, count: int) -> list[str]:
    """twistd's arguments for a worker: the main process's, less listeners and workers."""
    twistd = getattr(options, "parent", None) or {}
    argv = ["-n", "--pidfile="]
    if twistd.get("logfile") and twistd["logfile"] != "-":
        # A file of its own each: twistd's LogFile rotates by size, and two processes
        # rotating one file would lose lines.
        argv.append(f"--logfile={twistd['logfile']}.worker-{{worker}}")
    elif twistd.get("logfile"):
        argv.append("--logfile=-")
    if twistd.get("syslog"):
        argv += ["--syslog", f"--prefix={twistd.get('prefix') or 'ollama-proxy'}"]
    argv += ["ollama-proxy", "--worker", f"{{worker}}/{count}"]
    if options["config"]:
        argv += ["--config", os.path.abspath(options["config"])]
    if options["log-format"]:
        argv += ["--log-format", options["log-format"]]
    if options["demo"]:
        argv.append("--demo")
    return argv


def worker_service(options: Any, load: Callable[[], Config], reactor: Any, observer: Any) -> Any:
    """Worker I of N: a whole proxy fed by the main process, with the shared views."""
    from twisted.application.internet import TimerService

    from ollama_proxy.front.handover import HandoverReceiver
    from ollama_proxy.ops.aggregate import Aggregator, socket_path
    from ollama_proxy.ops.daemon import DaemonService
    from ollama_proxy.service import ListenerService
    from ollama_proxy.service import makeService as build

    index, count = parse_worker(options["worker"])
    runtime = os.environ.get(RUNTIME_ENV, "")
    if not runtime:
        raise SystemExit("ollama-proxy: --worker is started by the main process (--workers N), not by hand")

    def worker_load() -> Config:
        return for_worker(load(), index, count)

    proxy = build(worker_load(), reactor)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        proxy.metrics.share_between_processes(metrics_dir)
        gauges = TimerService(1.0, proxy.metrics.refresh_gauges)
        gauges.setName("shared-gauges")
        gauges.setServiceParent(proxy)
    proxy.site.resource = Aggregator(proxy.site.resource, reactor, runtime, count)
    private = ListenerService(f"unix:{socket_path(runtime, index)}:mode=600", proxy.site, reactor)
    private.setName("listen[worker]")
    private.setServiceParent(proxy)
    receiver = HandoverReceiver(reactor, proxy.site)

    class WorkerDaemon(DaemonService):
        def reload(self) -> bool:
            applied = super().reload()
            receiver.tell(b"L" if applied else b"F")  # the main process counts the answers
            return applied

    daemon = WorkerDaemon(proxy, reactor, worker_load, log_observer=observer)
    receiver._on_lost = daemon.terminate
    receiver.setServiceParent(proxy)
    return daemon
