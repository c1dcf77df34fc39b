"""Hold many streams open against the proxy, then have every client leave at once.

The benchmark's memory section runs this in a process of its own, so that the
clients' leaving is not spread out by a load client's event loop: Twisted's
client closes its connections one after the other, each behind its own
callbacks, and what was measured then was partly the measuring client. Here the
streams are plain non-blocking sockets on one ``epoll``; leaving is one tight
loop of ``close()`` calls, timed.

Usage (the benchmark drives it; the lines it prints are JSON)::

    python bench/holder.py --port P --path /api/chat --body-file F --count N \
        --status-port U [--status-path /nginx_status] [--parallel 200] [--deadline 600]

1. It reads the upstream nginx's ``stub_status`` (the baseline of its open
   connections), opens ``--count`` streams, ``--parallel`` at a time, and waits
   until each one has answered 200 and sent its first line; prints
   ``{"opened": N, "seconds": S, "baseline": B, "upstream": U}``.
2. It keeps reading (and dropping) what the streams send until a line ``close``
   arrives on its standard input (a stream that ends by itself is counted).
3. It reads what is waiting on every socket, then closes them all in one loop
   (``left_from``/``left_until``: wall-clock seconds of the first and the last
   close), and polls ``stub_status`` every ~2 ms until nginx has no more open
   connections than before: ``upstream_gone`` is when it first saw that,
   ``polled_before`` the poll before it; prints them with ``left`` (connections
   still open if it gave up after ``--close-timeout`` seconds) and exits.

It exits by itself after ``--deadline`` seconds whatever happens (the
benchmark's children also get SIGTERM when the benchmark dies).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time

MARKER = b'"done":false'  # in every line of a native stream but its last


class Stream:
    """One client connection: its socket and what it has read so far."""

    __slots__ = ("sock", "head", "opened", "ended")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = b""
        self.opened = False
        self.ended = False


def open_connections(status: tuple[int, str], timeout: float = 5.0) -> int:
    """The upstream's open connections as it reports them: nginx's ``stub_status``
    (``Active connections: N``) or the simulator's ``{"open_connections": N}``. The
    connection asking is among them; a baseline taken the same way cancels it out."""
    port, path = status
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.0\r\nHost: bench\r\n\r\n" % path.encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[1]
    if body.startswith(b"{"):
        return int(json.loads(body)["open_connections"])
    return int(body.split(b"\n", 1)[0].split(b":")[1])


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def open_streams(args: argparse.Namespace, request: bytes, selector: selectors.BaseSelector) -> list[Stream]:
    """Open ``args.count`` streams, at most ``args.parallel`` not yet answered at a time."""
    streams: list[Stream] = []
    waiting = 0
    opened = 0
    deadline = time.monotonic() + args.open_timeout
    while opened < args.count:
        while waiting < args.parallel and len(streams) < args.count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", args.port))
            stream = Stream(sock)
            streams.append(stream)
            selector.register(sock, selectors.EVENT_WRITE, stream)
            waiting += 1
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {opened} of {args.count} streams opened within {args.open_timeout:g} s")
        for key, events in selector.select(1.0):
            stream = key.data
            if events & selectors.EVENT_WRITE:
                error = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise RuntimeError(f"connecting to the proxy failed: {os.strerror(error)}")
                stream.sock.sendall(request)  # a few hundred bytes: the socket buffer takes them
                selector.modify(stream.sock, selectors.EVENT_READ, stream)
                continue
            data = stream.sock.recv(65536)
            if stream.opened:
                continue  # an early stream's next line
            if not data:
                raise RuntimeError(f"a stream closed before its first line: {stream.head[:300]!r}")
            stream.head += data
            end = stream.head.find(b"\r\n\r\n")
            if end < 0:
                continue
            if not stream.head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the proxy answered {stream.head[:300]!r}")
            if MARKER in stream.head[end:]:
                stream.opened, stream.head = True, b""
                opened += 1
                waiting -= 1
    return streams


def hold(streams: list[Stream], selector: selectors.BaseSelector, deadline: float) -> int:
    """Read and drop what the streams send until ``close`` comes on stdin; the streams
    that ended by themselves meanwhile."""
    control = sys.stdin.buffer
    selector.register(control, selectors.EVENT_READ, None)
    ended = 0
    try:
        while time.monotonic() < deadline:
            for key, _ in selector.select(0.5):
                if key.data is None:
                    line = control.readline()
                    if not line or line.strip() == b"close":
                        return ended
                    continue
                stream = key.data
                try:
                    data = stream.sock.recv(65536)
                except ConnectionError:
                    data = b""
                if not data and not stream.ended:
                    stream.ended = True
                    ended += 1
                    selector.unregister(stream.sock)
        raise RuntimeError("no 'close' came before the deadline")
    finally:
        selector.unregister(control)


def leave(streams: list[Stream]) -> tuple[float, float]:
    """Read what waits on each socket (so a close is a FIN, not a reset, where it can be),
    then close every one in one loop; the wall-clock times of the first and last close."""
    for stream in streams:
        try:
            while stream.sock.recv(65536):
                pass
        except (BlockingIOError, ConnectionError):
            pass
    socks = [s.sock for s in streams]
    first = time.time()
    for sock in socks:
        sock.close()
    return first, time.time()


def wait_upstream_gone(status: tuple[int, str], baseline: int, timeout: float) -> tuple[float, float, int]:
    """Poll the upstream's count until it holds no more connections than ``baseline``:
    (when it was first seen, when the poll before it was made, connections left)."""
    deadline = time.monotonic() + timeout
    previous = time.time()
    left = open_connections(status) - baseline
    while left > 0 and time.monotonic() < deadline:
        time.sleep(0.002)
        previous = time.time()
        left = open_connections(status) - baseline
    return time.time(), previous, max(0, left)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    parser.add_argument("--path", default="/api/chat")
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--status-port", type=int, required=True, help="the upstream's port")
    parser.add_argument("--status-path", default="/nginx_status", help="where it counts its open connections")
    parser.add_argument("--parallel", type=int, default=200)
    parser.add_argument("--open-timeout", type=float, default=300.0)
    parser.add_argument("--close-timeout", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=900.0, help="exit after this many seconds whatever happens")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.deadline
    status = (args.status_port, args.status_path)
    with open(args.body_file, "rb") as f:
        body = f.read()
    request = (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (args.path.encode(), args.port, len(body), body)
    )
    selector = selectors.DefaultSelector()
    streams: list[Stream] = []
    try:
        baseline = open_connections(status)
        started = time.monotonic()
        streams = open_streams(args, request, selector)
        say(
            opened=len(streams),
            seconds=time.monotonic() - started,
            baseline=baseline,
            upstream=open_connections(status) - baseline,
        )
        ended = hold(streams, selector, deadline)
        selector.close()
        first, last = leave(streams)
        gone, polled_before, left = wait_upstream_gone(
            status, baseline, min(args.close_timeout, max(1.0, deadline - time.monotonic()))
        )
        say(ended=ended, left_from=first, left_until=last, upstream_gone=gone, polled_before=polled_before, left=left)
        return 0
    except Exception as error:  # noqa: BLE001 - said to the benchmark, which stops everything
        say(error=f"{type(error).__name__}: {error}")
        return 1
    finally:
        for stream in streams:
            stream.sock.close()


if __name__ == "__main__":
    sys.exit(main())
