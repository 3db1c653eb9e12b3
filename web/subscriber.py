"""One pub/sub connection, read with hiredis: the broker's readers (jobcast.web.broker).

redis-py's ``PubSub.get_message`` runs a dozen layers for each message (a health check, a
retry wrapper, a readiness check, the RESP parser, the message's dict and its telemetry). A
process that hears one announcement every 100 ms runs them cold, and they held each value
back from its viewers: 310 µs from the kernel's receipt of an announcement to the reader
holding it, against 200 µs here, where the socket is read and parsed by hiredis, the parser
redis-py itself uses (under gevent, pinned to one CPU, 10 announcements a second; a bare read
and parse is 190 µs). redis-py still does what it does once per connection (dialling, TLS,
AUTH, HELLO, SELECT, finding a Sentinel's primary) and sends the commands.

Used as redis-py's PubSub is: ``subscribe``/``unsubscribe`` (and the sharded ``s…`` forms),
``get_message(timeout=...)``, ``close()``, and as a context manager.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import hiredis
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

READ_SIZE = 65536
"""Bytes asked of the socket per read: a burst of announcements in one read."""

HEALTH_CHECK_MESSAGE = b"jobcast-health-check"
"""The PING's message, sent every ``health_check_interval`` s of the client's settings (as
redis-py's PubSub sends one). A PING still unanswered when the next one is due means the
connection is dead, even where writes to it still succeed (a frozen server, a cut path):
the reader is told, and connects again."""

Message = tuple[str, bytes, Any]
"""(kind, channel, data): ``message``/``smessage`` with the payload, or a confirmation
(``subscribe``, ``unsubscribe``, ``ssubscribe``, ``sunsubscribe``) with the channel count."""


class Subscriber:
    """One pub/sub connection from ``client``'s pool (connected on the first command)."""

    def __init__(self, client: Redis):
        """Take connections from ``client``'s pool; nothing is dialled yet."""
        self.pool = client.connection_pool
        self.connection = None
        self._sock: socket.socket | None = None
        self._timeout: float | None = None
        self._reader = hiredis.Reader()
        self._buffer = bytearray(READ_SIZE)
        self._interval = 0.0
        self._next_check = 0.0
        self._unanswered = False  # a health check's PING awaits its answer
        self._closed = False
        # Commands go out whole, one at a time: the broker's control loop subscribes while
        # its reader sends the health check (redis-py's PubSub holds a lock alike).
        self._lock = threading.Lock()

    def __enter__(self) -> "Subscriber":
        """The subscriber itself, closed on leaving."""
        return self

    def __exit__(self, *exc_info) -> None:
        """Close the connection."""
        self.close()

    def subscribe(self, *names: str) -> None:
        """Send SUBSCRIBE for ``names``; the confirmations come as messages."""
        self._send("SUBSCRIBE", *names)

    def unsubscribe(self, *names: str) -> None:
        """Send UNSUBSCRIBE for ``names``."""
        self._send("UNSUBSCRIBE", *names)

    def ssubscribe(self, *names: str) -> None:
        """Send SSUBSCRIBE for ``names`` (one slot: a shard's channels)."""
        self._send("SSUBSCRIBE", *names)

    def sunsubscribe(self, *names: str) -> None:
        """Send SUNSUBSCRIBE for ``names`` (one slot)."""
        self._send("SUNSUBSCRIBE", *names)

    def get_message(self, timeout: float | None = 0.0) -> Message | None:
        """The next message, waiting up to ``timeout`` s for one to come (None: for as long
        as it takes); None if none did.

        ``timeout=0`` takes only what an earlier read already brought (announcements that
        came together are taken together), and never reads the socket. A lost connection
        raises redis-py's ConnectionError (or OSError).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reply = self._reader.gets()
            if reply is False:
                if timeout == 0:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._read(left)  # (whatever came is taken from the reader above)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
            if isinstance(reply, list) and len(reply) == 3 and reply[0] != b"pong":
                return reply[0].decode(), reply[1], reply[2]
            if reply == HEALTH_CHECK_MESSAGE or (isinstance(reply, list) and reply[0] == b"pong"):
                self._unanswered = False  # (RESP3 answers a bulk string, RESP2 a list)
            # Otherwise a reply to nothing asked: nothing to tell.

    def close(self) -> None:
        """Disconnect, and give the connection back to its pool (which dials it again if it
        is ever taken). A closed subscriber sends nothing more: a command raises."""
        with self._lock:
            self._closed = True
            conn, self.connection, self._sock = self.connection, None, None
        self._reader = hiredis.Reader()
        if conn is not None:
            try:
                conn.disconnect()
            finally:
                self.pool.release(conn)

    # -- the connection ----------------------------------------------------------------------

    def _connect(self):
        """The connection, taken from the pool and connected on first use (under the lock)."""
        if self._closed:
            # (a command that raced the reader's close must not dial a connection nobody reads)
            raise RedisConnectionError("the subscriber is closed")
        if self.connection is None:
            conn = self.pool.get_connection()
            self.connection = conn
            # redis-py keeps its socket to itself: reading it is what this class is for.
            self._sock = conn._sock
            self._timeout = None
            self._interval = float(conn.health_check_interval or 0)
            self._next_check = time.monotonic() + self._interval
            self._unanswered = False
        return self.connection

    def _send(self, *args) -> None:
        """Send one command (its reply comes as a message)."""
        if not args[1:]:
            return
        # No health check of redis-py's: its PING's reply would be read by its parser, which
        # reads nothing here.
        with self._lock:
            self._connect().send_command(*args, check_health=False)

    def _read(self, timeout: float | None) -> None:
        """Feed the reader what the socket has, waiting up to ``timeout`` s (None: no limit).
        Sends the health check when it is due, and raises when the last one went
        unanswered."""
        with self._lock:
            conn = self._connect()
            sock = self._sock
            if sock is None or conn._sock is not sock:
                # A failed send disconnected it (redis-py would dial a new socket, subscribed
                # to nothing, on the next one): the reader must start again.
                raise RedisConnectionError("the pub/sub connection was lost")
            if self._interval:
                now = time.monotonic()
                if now >= self._next_check and not self._unanswered:
                    self._next_check = now + self._interval
                    self._unanswered = True
                    conn.send_command("PING", HEALTH_CHECK_MESSAGE, check_health=False)
                # Wake for the next check (or the answer's deadline), however long the
                # caller would wait.
                left = max(self._next_check - now, 0.001)
                timeout = left if timeout is None else min(timeout, left)
        if timeout != self._timeout:
            sock.settimeout(timeout)  # (under real threads, a system call: made only on change)
            self._timeout = timeout
        try:
            n = sock.recv_into(self._buffer)
        except socket.timeout:
            # Nothing came, so no answer waits unread either (a busy reader that had not read
            # it is not taken for a dead connection).
            if self._unanswered and time.monotonic() >= self._next_check:
                raise RedisConnectionError(
                    f"no answer to the health check in {self._interval:g} s") from None
            return
        if not n:
            raise RedisConnectionError("Redis closed the pub/sub connection")
        self._reader.feed(self._buffer, 0, n)
