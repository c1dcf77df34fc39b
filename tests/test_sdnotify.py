"""sd_notify: the datagram, the abstract socket form, the watchdog timer."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from twisted.internet.task import Clock

from ollama_proxy.ops.sdnotify import SystemdNotifier, notify, watchdog_interval


def receiver(abstract: bool = False) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"ollama-proxy-test-{id(sock)}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(Path(tempfile.mkdtemp(prefix="opn-")) / "notify")
        sock.bind(address)
    sock.settimeout(5)
    return sock, address


def test_notify_sends_one_datagram_to_a_path_socket():
    sock, address = receiver()
    with sock:
        assert notify("READY=1\nSTATUS=hello", {"NOTIFY_SOCKET": address})
        assert sock.recv(4096) == b"READY=1\nSTATUS=hello"


def test_notify_reaches_an_abstract_socket():
    sock, address = receiver(abstract=True)
    with sock:
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": address})
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_without_a_socket_or_to_a_gone_one_is_harmless():
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}) is False


def test_watchdog_interval_is_half_the_timeout_for_this_process_only():
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}, 42) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, 42) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}, 42) is None


def test_notifier_messages_and_watchdog_on_a_clock():
    sent: list[str] = []
    clock = Clock()
    notifier = SystemdNotifier(
        clock,
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000"},
        send=lambda m, env: sent.append(m) or True,
        pid=99,
    )
    notifier.startService()
    assert sent == ["WATCHDOG=1"]  # at once, then every second
    clock.advance(1.0)
    clock.advance(1.0)
    assert sent.count("WATCHDOG=1") == 3
    notifier.ready("listening on 127.0.0.1:11434")
    assert sent[-1] == "READY=1\nMAINPID=99\nSTATUS=listening on 127.0.0.1:11434"
    notifier.reloading()
    assert sent[-1].startswith("RELOADING=1\nMONOTONIC_USEC=")
    notifier.stopping("draining 2 requests")
    assert sent[-1] == "STOPPING=1\nSTATUS=draining 2 requests"
    notifier.stopService()
    clock.advance(5.0)
    assert sent.count("WATCHDOG=1") == 3
    assert not clock.getDelayedCalls()


def test_no_watchdog_timer_without_a_notify_socket():
    clock = Clock()
    notifier = SystemdNotifier(clock, {"WATCHDOG_USEC": "2000000"}, send=lambda m, env: True)
    notifier.startService()
    assert not clock.getDelayedCalls()
    notifier.stopService()
