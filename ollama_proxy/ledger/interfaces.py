"""The ledger's seam with the request path, as a zope.interface interface."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IUsageLedger(Interface):
    """What the pipeline and the front door ask of the usage ledger."""

    service = Attribute("The ledger's service (flush timer, retention, final flush) for the service tree.")

    def admit(record):
        """Count a request that names its model against its token's limits (before
        anything goes upstream); raise :class:`~ollama_proxy.ledger.limits.LimitExceeded`
        when one refuses it."""

    def observe(record):
        """The request finished: queue its row (never blocks, never raises)."""

    def report(args, principal):
        """``GET /api/usage``: a coroutine answering the JSON object for the query
        string ``args``, limited to ``principal``'s own rows unless it is an admin."""

    def reconfigure(config):
        """Apply a reloaded configuration's limits and prices."""
