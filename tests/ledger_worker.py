"""A process that writes rows to a ledger, as one worker of several would.

``python -m tests.ledger_worker URL NAME COUNT``: COUNT rows for token NAME, in
small batches interleaved with the other processes' batches (they all start at
the word ``go`` on stdin), then a drain.
"""

from __future__ import annotations

import sys

from twisted.internet import task
from twisted.internet.defer import ensureDeferred

from ollama_proxy.ledger.limits import Meter
from ollama_proxy.ledger.store import LedgerStore
from ollama_proxy.ledger.writer import LedgerWriter
from tests.ledger_helpers import NOON, row


async def main(reactor, url: str, name: str, count: int) -> None:
    store = LedgerStore(url, reactor)
    writer = LedgerWriter(store, Meter(task.Clock()), batch_size=7)
    try:
        await writer.flush()  # migrated: the schema is there
        # Both processes start writing together, at the test's word.
        print("ready", flush=True)
        sys.stdin.readline()
        for index in range(count):
            writer.add(row(NOON, token=name, request_id=f"{name}-{index}", cost=0.001))
            if index % 5 == 0:
                await writer.flush()
        if not await writer.drain():
            raise SystemExit(f"{name}: {writer.pending} rows not written")
    finally:
        store.close()


if __name__ == "__main__":
    task.react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1], sys.argv[2], int(sys.argv[3]))))
