"""The seams between parts, as zope.interface interfaces."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import Attribute, Interface


class IUpstreamStream(IPushProducer):
    """A streamed answer whose status and headers arrived and were a success.

    It is the push producer of the client's request it is relayed to: a full client
    socket pauses the upstream read (``pauseProducing``/``resumeProducing``), and
    ``stopProducing`` closes the upstream connection now, so the provider stops
    generating (and billing).
    """

    def deliver(on_event):
        """Call ``on_event(dict)`` for each JSON event as it arrives.

        Returns a Deferred that fires when the stream ended cleanly and fails with
        :class:`~ollama_proxy.errors.UpstreamStreamError` when it did not. Cancelling
        that Deferred closes the upstream connection.
        """


class IBatchedUpstreamStream(IUpstreamStream):
    """A stream that can tell where one network read's events end."""

    def deliver_batched(on_event, on_batch_end, on_text=None):
        """As :meth:`IUpstreamStream.deliver`, and ``on_batch_end()`` after the events
        of each read: a consumer writes them to its client at once, not one by one.

        With ``on_text``, an event that holds only text (one choice, a content delta,
        see :func:`~ollama_proxy.wire.plain_chunk.plain_content`) may be handed to
        ``on_text(str)`` instead of ``on_event``: the same event, not decoded whole."""


class IProvider(Interface):
    """One upstream that answers chat and embedding requests."""

    name = Attribute("The provider's name, unique among the configured providers.")
    type = Attribute("The wire protocol's name: openrouter, openai, ...")
    label = Attribute("A human name for error messages, e.g. 'OpenRouter'.")
    configured = Attribute("False when it cannot work (no key); requests then fail clearly.")

    def list_models():
        """Deferred list of :class:`~ollama_proxy.wire.models.UpstreamModel`."""

    def open_chat(body):
        """POST a streamed chat completion; Deferred :class:`IUpstreamStream`.

        Fails with :class:`~ollama_proxy.errors.UpstreamError` when the provider
        answers an error status or cannot be reached.
        """

    def embed(model, inputs, dimensions):
        """Deferred ``(vectors, prompt_tokens)`` for a list of input strings."""

    def check_health():
        """Deferred that fires when the provider answers, fails when it does not."""

    def close():
        """Deferred that fires when the connection pool is closed."""


class IMessagesProvider(IProvider):
    """A provider that speaks Anthropic's Messages API itself: ``/v1/messages``
    requests reach it unchanged (thinking signatures, ``cache_control``)."""

    def open_messages(body, beta):
        """POST a streamed Messages request as given; Deferred :class:`IUpstreamStream`
        whose events are Messages events (see :func:`ollama_proxy.wire.anthropic_answer.native_decoder`).
        ``beta`` is the client's ``anthropic-beta`` header, or None."""

    def count_tokens(body, beta):
        """Deferred ``int``: the provider's own count of the request's input tokens."""
