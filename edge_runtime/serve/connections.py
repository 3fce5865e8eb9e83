"""Connection limits below the app: a deadline for every request head and a cap on open connections.

uvicorn bounds the time after a response (``timeout_keep_alive``, but any byte cancels it) and h11
bounds a head's size, yet nothing bounds the time a connection may take to send its request head,
and uvicorn's ``limit_concurrency`` counts every open connection: a few hundred sockets that never
send a byte would hold every slot forever and each real request would get 503. This protocol is
uvicorn's h11 protocol with two more rules:

- a connection that has not sent a complete request head within ``head_timeout`` seconds of opening
  (or of its previous response) is closed; one deadline per head, so a byte at a time does not
  extend it. A client caught mid-head gets a one-line JSON 408 first.
- at most ``max_open`` connections are open: a new one past the cap closes, among the connections
  waiting for a request head or still receiving an upload, the one that has made the least progress
  (bytes per second since it began waiting or receiving; an upload cut off gets a JSON 408). A
  request past its upload is never closed for this: when every connection has one, the new
  connection is closed instead. A real client's fresh connection has made the most progress of all.

Requests in progress are counted by the app (``app.Guard``), not here. Errors
uvicorn answers itself (a malformed head) are one line of JSON, like the app's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_runtime.serve.config import ServeConfig

LOG = logging.getLogger("uvicorn.error")
LOG_EVERY_S = 10.0  # an attack closes thousands of connections: say so once per period, not per connection
# Progress is bytes received per second since the connection began waiting for a head or receiving a
# body, counting this many bytes more: a connection that has just begun (a real client's head or body
# is a packet away) has made the most progress; one that idles or trickles falls behind with time.
PROGRESS_CREDIT = 64 * 1024


def json_answer(status: int, reason: bytes, message: str) -> bytes:
    """A complete HTTP/1.1 error answer with a one-line JSON body, closing the connection."""
    body = json.dumps({"error": message, "status": status}).encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, reason, len(body)) + body


class ConnectionTable:
    """The open connections of one server, and which of them may be closed to make room."""

    def __init__(self, max_open: int):
        self.max_open = max_open
        self.open: set = set()
        self.evicted, self.refused, self.timed_out, self.last_log = 0, 0, 0, 0.0

    def admit(self, connection) -> bool:
        """Take ``connection`` in, closing the one with the least progress past the cap; False when none may go."""
        if len(self.open) >= self.max_open:
            victim = min((c for c in self.open if c.may_be_closed()), key=lambda c: c.progress(), default=None)
            if victim is None:
                self.refused += 1
                self.report()
                return False
            self.forget(victim)
            victim.close_for_room()
            self.evicted += 1
            self.report()
        self.open.add(connection)
        return True

    def forget(self, connection) -> None:
        self.open.discard(connection)

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

    head_timeout: float = ServeConfig.head_timeout  # guarded_protocol() sets both for one server
    table: ConnectionTable = ConnectionTable(ServeConfig.max_open_connections)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.head_deadline: asyncio.TimerHandle | None = None
        self.phase_start, self.phase_bytes = 0.0, 0  # waiting for a head, or receiving a body
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
        self.phase_bytes += len(data)
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a complete request head arrived: its request is in progress
            self.cancel_deadline()
            self.phase_start, self.phase_bytes = self.loop.time(), 0

    def receiving_body(self) -> bool:
        """Whether the request in progress is still receiving its upload (its answer not begun)."""
        cycle = self.cycle
        return (
            cycle is not None
            and not cycle.response_started
            and not cycle.response_complete
            and self.conn.their_state is h11.SEND_BODY
        )

    def may_be_closed(self) -> bool:
        """Waiting for a request head or receiving an upload: nothing of ours is under way for it."""
        return self.head_deadline is not None or self.receiving_body()

    def progress(self) -> float:
        """Bytes per second since this connection began waiting for a head or receiving a body (see PROGRESS_CREDIT)."""
        return (self.phase_bytes + PROGRESS_CREDIT) / max(self.loop.time() - self.phase_start, 1e-3)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        """The connection leaves this protocol (only where WebSockets are on): it leaves its limits too."""
        self.cancel_deadline()
        self.table.forget(self)
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self.wait_for_head()  # before the parent's: it may find a pipelined head at once
        super().on_response_complete()

    def wait_for_head(self) -> None:
        self.cancel_deadline()
        self.head_deadline = self.loop.call_later(self.head_timeout, self.head_timed_out)
        self.phase_start, self.phase_bytes = self.loop.time(), 0

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

    def close_for_room(self) -> None:
        """Close this connection, the one with the least progress, for a new one (an upload gets a JSON 408)."""
        if self.receiving_body():
            message = "the upload was too slow: the connection was closed to serve other clients; send it again"
            self.transport.write(json_answer(408, b"Request Timeout", message))
        self.close_waiting()

    def send_400_response(self, msg: str) -> None:
        """A malformed or oversized request head: one line of JSON (uvicorn's own answer is text/plain)."""
        self.transport.write(json_answer(400, b"Bad Request", f"malformed HTTP request: {msg}"))
        self.transport.close()


def guarded_protocol(*, head_timeout: float, max_open: int) -> type[GuardedH11Protocol]:
    """The protocol class for one server (``uvicorn.Config(http=...)``): its own table of connections."""
    attrs = {"head_timeout": head_timeout, "table": ConnectionTable(max_open)}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attrs)
