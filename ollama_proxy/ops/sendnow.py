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

:func:`write_now` writes a message straight to the socket (``send``) when Twisted holds
nothing unsent for it, and hands Twisted only what the socket did not take: the bytes go
out in the call, and the reactor is not asked to watch the socket for writability and then
to stop watching it (two ``epoll_ctl`` calls a write, four a request), as asyncio's socket
transports write. A transport that is not a plain socket of the reactor's (TLS, a test's
transport), one being closed, or one with bytes still queued is written the usual way; an
error (a peer gone) is left to the transport's own write, which closes the connection.
Against sending through ``doWrite`` after Twisted's write (the way before), wrk c1 p50
0.504/0.496/0.503/0.478/0.494 -> 0.464/0.469/0.467/0.454/0.478 ms side by side (nginx
upstream, ``/api/chat``), CPU a request at c1 -5 %, at c64 unchanged (0.354-0.357 ms).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport, ISystemHandle, IWriteDescriptor

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


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``: straight to its socket while the proxy is nearly idle
    and nothing written before is still queued; what the socket does not take (or all of
    it, any other time) through ``transport.write``, in order, at the next poll."""
    if data and _straight(transport):
        try:
            sent = transport.getHandle().send(data)
        except OSError:  # EAGAIN, or a peer gone: the transport's own write meets it and closes
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _straight(transport: Any) -> bool:
    """Whether a write may go straight to ``transport``'s socket now."""
    return (
        answering.count <= EAGER_WHILE_ANSWERING
        and IWriteDescriptor.providedBy(transport)
        and ISystemHandle.providedBy(transport)
        and not ISSLTransport.providedBy(transport)  # TLS started on the connection: encrypt first
        and getattr(transport, "connected", False)
        and not getattr(transport, "disconnecting", True)
        # Twisted's two buffers (abstract.FileDescriptor): bytes written before and unsent go first.
        and not getattr(transport, "dataBuffer", True)
        and not getattr(transport, "_tempDataBuffer", True)
    )
