"""The connection table both servers keep (ctrlexec/connections.py), on
real socket pairs: eviction interrupts the evicted connection, and every
kept duplicate is closed exactly when its connection leaves or is proven."""

from __future__ import annotations

import socket
import threading

from ctrlexec.connections import Connections
from ctrlexec.core import admission


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_a_newcomer_over_the_address_cap_interrupts_the_oldest():
    table = Connections(admission.Limits(8, 1, 4))
    old, old_peer = pair()
    new, new_peer = pair()
    try:
        table.arrive(1, "10.0.0.1", old.dup())
        table.arrive(2, "10.0.0.1", new.dup())
        assert table.evicted(1) and not table.evicted(2)
        old.settimeout(1)
        assert old.recv(1) == b""  # the evicted connection's read returned
        assert table.active == 2  # its thread still has to leave
        table.leave(1)
        table.leave(2)
        assert table.active == 0
    finally:
        for sock in (old, old_peer, new, new_peer):
            sock.close()


def test_promotion_and_leaving_close_the_kept_duplicate():
    table = Connections(admission.Limits(8, 8, 1))
    conn, peer = pair()
    try:
        handle = conn.dup()
        table.arrive("a", "10.0.0.2", handle)
        assert table.promote("a") == admission.PROMOTED
        assert handle.fileno() == -1
        other = conn.dup()
        table.arrive("b", "10.0.0.3", other)
        assert table.promote("b") == admission.OVERLOAD  # the one handler slot is taken
        table.leave("a")
        table.leave("b")
        assert table.active == 0 and other.fileno() == -1
    finally:
        conn.close()
        peer.close()


def test_wait_idle_returns_when_the_last_connection_leaves():
    table = Connections(admission.Limits(8, 8, 8))
    conn, peer = pair()
    try:
        table.arrive(1, "10.0.0.4", conn.dup())
        assert table.wait_idle(0.01) is False
        left = threading.Event()

        def leave() -> None:
            left.wait(5)
            table.leave(1)

        thread = threading.Thread(target=leave)
        thread.start()
        left.set()
        assert table.wait_idle(5) is True
        thread.join()
    finally:
        conn.close()
        peer.close()
