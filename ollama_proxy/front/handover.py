"""The worker's side of worker mode: connections arrive from the main process.

A worker has no listening socket. Its fd 3 is a Unix socket to the main process,
which sends each accepted connection as a file descriptor with one byte naming its
address family; the worker adopts it into its Site with ``adoptStreamConnection``,
as if it had accepted it itself. Once its service tree runs, the worker writes
``R`` on the channel: from then on it is handed connections.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ollama_proxy.ops.listeners import TAG_FAMILIES

log = Logger()

CHANNEL_FD = 3


@implementer(IFileDescriptorReceiver)
class _Channel(Protocol):
    """Descriptors and their family bytes, in the order they were sent."""

    def __init__(self, receiver: HandoverReceiver) -> None:
        self.receiver = receiver
        self.descriptors: deque[int] = deque()

    def connectionMade(self) -> None:
        self.receiver.channel = self
        assert self.transport is not None
        self.transport.write(b"R")

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.descriptors.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        for tag in data:
            if not self.descriptors:
                log.error("handover: a family byte without a descriptor")
                continue
            descriptor = self.descriptors.popleft()
            self.receiver.adopt(descriptor, TAG_FAMILIES.get(bytes([tag]), socket.AF_INET))

    def connectionLost(self, reason: Any = None) -> None:
        while self.descriptors:
            os.close(self.descriptors.popleft())
        self.receiver.channel = None
        self.receiver.channel_lost()


class HandoverReceiver(Service):
    """Adopts the connections the main process hands this worker into ``factory``."""

    def __init__(self, reactor: Any, factory: Any, fd: int = CHANNEL_FD, on_lost: Any = None) -> None:
        self.reactor = reactor
        self.factory = factory
        self.fd = fd
        self.channel: _Channel | None = None
        self.adopted = 0
        self._on_lost = on_lost

    def startService(self) -> None:
        super().startService()
        factory = Factory.forProtocol(lambda: _Channel(self))
        self.reactor.adoptStreamConnection(self.fd, socket.AF_UNIX, factory)
        os.close(self.fd)  # the reactor has its own duplicate

    def adopt(self, descriptor: int, family: int) -> None:
        try:
            if self.running:
                self.reactor.adoptStreamConnection(descriptor, family, self.factory)
                self.adopted += 1
        except Exception:  # noqa: BLE001 - one bad descriptor must not end the worker
            log.failure("adopting a handed-over connection failed")
        finally:
            os.close(descriptor)

    def channel_lost(self) -> None:
        # The main process is gone: nobody will hand us work, and nobody supervises us.
        if self.running and self._on_lost is not None:
            log.error("the main process closed the channel: stopping")
            self._on_lost()

    def tell(self, message: bytes) -> None:
        """One byte to the main process (``L``: reloaded, ``F``: reload refused)."""
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.write(message)

    def stopService(self) -> None:
        super().stopService()
        # No new connections while draining; the main process already sends none.
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.loseConnection()
