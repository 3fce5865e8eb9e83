"""Connection limits below the app: a deadline for every request head and a cap on open connections.

uvicorn bounds the time after a response (``timeout_keep_alive``, but any byte cancels it) and h11
bounds a head's size, yet nothing bounds the time a connection may take to send its request head,
and uvicorn's ``limit_concurrency`` counts every open connection: a few hundred sockets that never
send a byte would hold every slot forever and each real request would get 503. This protocol is
uvicorn's h11 protocol with two more rules:

- a connection that has not sent a complete request head within ``head_timeout`` seconds of opening
  (or of its previous response) is closed; one deadline per head, so a byte at a time does not
  extend it. A client caught mid-head gets a one-line JSON 408 first.
- at most ``max_open`` connections are open: a new one past the cap closes the connection that has
  waited longest for a request head; when none is waiting, the one receiving its upload the slowest
  (bytes per second since its head; it gets a JSON 408). A connection whose request is past its
  upload is never closed for this; when every connection has one, the new connection is closed.

Requests in progress (complete heads) are counted by the app (``app.InFlight``), not here. Errors
uvicorn answers itself (a malformed head) are one line of JSON, like the app's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

LOG = logging.getLogger("uvicorn.error")
UPLOAD_CREDIT = 64 * 1024  # bytes: a client whose body is a packet behind its head is not taken for a slow one
LOG_EVERY_S = 10.0  # an attack closes thousands of connections: say so once per period, not per connection


def json_answer(status: int, reason: bytes, message: str) -> bytes:
    """A complete HTTP/1.1 error answer with a one-line JSON body, closing the connection."""
    body = json.dumps({"error": message, "status": status}).encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, reason, len(body)) + body


class ConnectionTable:
    """The open connections of one server; those waiting for a request head in the order they began waiting."""

    def __init__(self, max_open: int):
        self.max_open = max_open
        self.open: set = set()
        self.waiting: dict = {}  # insertion-ordered: the first one has waited longest
        self.evicted, self.refused, self.timed_out, self.last_log = 0, 0, 0, 0.0

    def admit(self, connection) -> bool:
        """Take ``connection`` in, closing the longest-waiting one past the cap; False when it must be closed."""
        if len(self.open) >= self.max_open:
            if self.waiting:
                victim = next(iter(self.waiting))
                self.forget(victim)
                victim.close_waiting()
            else:
                victim = min((c for c in self.open if c.receiving_body()), key=lambda c: c.upload_rate(), default=None)
                if victim is None:
                    self.refused += 1
                    self.report()
                    return False
                self.forget(victim)
                victim.close_slow_upload()
            self.evicted += 1
            self.report()
        self.open.add(connection)
        return True

    def wait_for_head(self, connection) -> None:
        self.waiting.pop(connection, None)
        self.waiting[connection] = None  # to the end: it has waited least

    def got_head(self, connection) -> None:
        self.waiting.pop(connection, None)

    def forget(self, connection) -> None:
        self.open.discard(connection)
        self.waiting.pop(connection, None)

    def report(self) -> None:
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            LOG.warning(
                "connections: %d open (cap %d); so far %d closed for a newer one, %d refused (all busy), "
                "%d closed without a complete request head in time",
                len(self.open), self.max_open, self.evicted, self.refused, self.timed_out,
            )  # fmt: skip


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and the open-connection cap (see the module)."""

    head_timeout: float = 10.0
    table: ConnectionTable = ConnectionTable(512)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.head_deadline: asyncio.TimerHandle | None = None
        self.head_at, self.body_bytes = 0.0, 0
        super().connection_made(transport)
        if not self.table.admit(self):
            self.connections.discard(self)
            transport.close()
            return
        self.wait_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        self.table.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.receiving_body():
            self.body_bytes += len(data)
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a complete request head arrived: its request is in progress
            self.cancel_deadline()
            self.table.got_head(self)
            self.head_at, self.body_bytes = self.loop.time(), 0

    def receiving_body(self) -> bool:
        """Whether the request in progress is still receiving its upload (its answer not begun)."""
        cycle = self.cycle
        return (
            cycle is not None
            and not cycle.response_started
            and not cycle.response_complete
            and self.conn.their_state is h11.SEND_BODY
        )

    def upload_rate(self) -> float:
        """Bytes per second since the head, counting UPLOAD_CREDIT bytes more: an upload that has just begun is fast."""
        return (self.body_bytes + UPLOAD_CREDIT) / max(self.loop.time() - self.head_at, 1e-3)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self.wait_for_head()  # before the parent's: it may find a pipelined head at once
        super().on_response_complete()

    def wait_for_head(self) -> None:
        self.cancel_deadline()
        self.head_deadline = self.loop.call_later(self.head_timeout, self.head_timed_out)
        self.table.wait_for_head(self)

    def cancel_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def head_timed_out(self) -> None:
        self.head_deadline = None
        self.table.timed_out += 1
        self.table.report()
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:  # caught mid-head: say why
            message = f"the request head did not arrive within {self.head_timeout:g} s"
            self.transport.write(json_answer(408, b"Request Timeout", message))
        self.close_waiting()

    def close_waiting(self) -> None:
        """Close a connection that has no request in progress (no answer is owed to it)."""
        self.cancel_deadline()
        if not self.transport.is_closing():
            self.transport.close()

    def close_slow_upload(self) -> None:
        """Close a connection whose upload is the slowest while a new client needs its place."""
        message = "the upload was too slow: the connection was closed to serve other clients; send it again"
        self.transport.write(json_answer(408, b"Request Timeout", message))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A malformed or oversized request head: one line of JSON (uvicorn's own answer is text/plain)."""
        self.transport.write(json_answer(400, b"Bad Request", f"malformed HTTP request: {msg}"))
        self.transport.close()


def guarded_protocol(*, head_timeout: float, max_open: int) -> type[GuardedH11Protocol]:
    """The protocol class for one server (``uvicorn.Config(http=...)``): its own table of connections."""
    attrs = {"head_timeout": head_timeout, "table": ConnectionTable(max_open)}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attrs)
