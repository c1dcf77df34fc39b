"""The names Twisted's channel sets on itself, for a channel that keeps them in slots.

A slot hides the base classes' default of the same name, so the defaults are set on each
channel as it is built (tests compare them with Twisted's classes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.protocols.basic import LineReceiver

# HTTPChannel's, LineReceiver's and TimeoutMixin's names set per connection.
TWISTED_CHANNEL_NAMES = (
    "requests",
    "_handlingRequest",
    "_dataBuffer",
    "_transferDecoder",
    "callLater",
    "timeOut",
    "_TimeoutMixin__timeoutCall",
    "_networkProducer",
    "_busyReceiving",
    "_buffer",
    "_receivedHeaderSize",
    "_receivedHeaderCount",
    "_HTTPChannel__first_line",
    "_HTTPChannel__header",
    "_command",
    "_path",
    "_version",
    "length",
    "_savedTimeOut",
    "_requestProducer",
    "_requestProducerStreaming",
    "_waitingForTransport",
    "_abortingCall",
)


def _call_later(delay: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> IDelayedCall:
    """TimeoutMixin's default ``callLater`` (the global reactor's), for a channel no factory built."""
    from twisted.internet import reactor

    return reactor.callLater(delay, f, *args, **kwargs)


def set_twisted_channel_defaults(channel: Any) -> None:
    """Set the class defaults of Twisted's names that ``channel`` keeps in slots."""
    channel.callLater = _call_later  # the factory sets its reactor's
    channel.timeOut = channel._TimeoutMixin__timeoutCall = channel._savedTimeOut = None
    channel._buffer, channel._busyReceiving = LineReceiver._buffer, False
    channel._receivedHeaderSize = channel._receivedHeaderCount = channel.length = 0
    channel._HTTPChannel__first_line, channel._HTTPChannel__header = 1, b""
    channel._requestProducer = channel._requestProducerStreaming = channel._abortingCall = None
    channel._waitingForTransport = False
