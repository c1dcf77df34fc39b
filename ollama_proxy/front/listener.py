"""The listening side: one Twisted endpoint service per ``--listen`` description.

Twisted's :class:`~twisted.application.internet.StreamServerEndpointService` does the
work (privileged start, so a port below 1024 binds before twistd sheds its user;
stopping the port; cancelling a pending listen); this subclass keeps the bound port,
so a caller can learn a port the system chose, and logs where it listens.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()


@implementer(IStreamServerEndpoint)
class _Noting:
    """An endpoint that tells ``bound`` the port it listens on."""

    def __init__(self, endpoint: IStreamServerEndpoint, bound: Any) -> None:
        self._endpoint = endpoint
        self._bound = bound

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        return self._endpoint.listen(factory).addCallback(self._bound)


class ListenerService(StreamServerEndpointService):
    """Listens on one endpoint string; ``port`` is the bound port while it listens."""

    # Twisted's documented switch: a failed bind raises from (privileged)startService,
    # so twistd stops start-up with the reason instead of running deaf.
    _raiseSynchronously = True

    def __init__(self, description: str, factory: Any, reactor: Any) -> None:
        self.description = description
        self.port: IListeningPort | None = None
        super().__init__(_Noting(endpoints.serverFromString(reactor, description), self._bound), factory)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        host = port.getHost()
        log.info(
            "listening on {host}:{port} ({description})",
            host=getattr(host, "host", host),
            port=getattr(host, "port", ""),
            description=self.description,
        )
        return port

    def stopService(self) -> Deferred[None]:
        self.port = None
        return super().stopService()
