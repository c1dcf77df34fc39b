"""Sending a complete message at once while the proxy answers one request only, instead of at the
reactor's next poll.

Twisted's socket transports buffer every write: the bytes go to the kernel when the
reactor next polls and finds the socket writable. Whatever the program does in the
rest of that turn, and the poll itself, is time the peer waits for bytes that were
ready. For a message that is complete when it is written (a request to an upstream,
a whole answer to a client) that wait is latency: at concurrency 1, 31 µs (p50)
between the upstream request's ``write`` and its ``send`` and 53 µs between a whole
answer's and its send, while the request's finish and the handler's coroutines ran;
sent at once, a request's p50 fell from 0.62-0.65 to 0.48-0.51 ms (wrk, nginx upstream).

Under load the wait is what makes Twisted efficient: one poll finds many sockets
writable and many answers readable, and a turn's work is shared among them. Sent at
once at concurrency 64, the upstream answered sooner and the proxy read the answers in
more, smaller passes: 8-19 % more CPU a request. So a message is sent at once only
while the proxy answers a single request (:data:`EAGER_WHILE_ANSWERING`); the front door
counts them (:data:`answering`).

:func:`send_now` asks the transport to write what it holds through the method the
reactor itself calls when the socket is writable (``IWriteDescriptor.doWrite``): what
the socket does not take stays buffered for the next poll, as before, and an error (a
peer gone) is left to that poll too, where the reactor closes the connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IWriteDescriptor
from twisted.logger import Logger

log = Logger()

# At most this many requests being answered (in this process), a complete message is sent
# at once; more, and it waits for the poll. Measured (wrk, nginx, p50): one client 0.62 ->
# 0.50 ms; two clients already keep the proxy busy (0.96 ms either way), and with four
# sending at once cost CPU (0.44 -> 0.46 ms a request). At 64 the CPU is as before.
EAGER_WHILE_ANSWERING = 1


class Answering:
    """How many requests this process is answering now (the front door's count)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


answering = Answering()


def send_now(transport: Any) -> None:
    """Hand what ``transport`` holds to the kernel now when it is a socket of the reactor's
    and the proxy is nearly idle; anything else waits for the poll: a busy proxy, a
    connection being closed, a test's transport, and TLS (Twisted's TLS layer gathers a
    turn's writes and encrypts them at the end of the turn: there is nothing to send yet)."""
    if answering.count > EAGER_WHILE_ANSWERING or not IWriteDescriptor.providedBy(transport):
        return
    if getattr(transport, "connected", False) and not getattr(transport, "disconnecting", True):
        try:
            transport.doWrite()
        except Exception:  # noqa: BLE001 - the reactor's own call would close the connection: left to it
            log.failure("sending at once failed; left to the next poll")
