"""Abuse limits at the edge: caps on concurrent streams, and per-client rates (of failed
authentications, of job creations); the token itself is web/security.py's."""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import Counter
from functools import lru_cache
from typing import Callable

from flask import request
from werkzeug.exceptions import HTTPException

from jobcast.core.settings import Settings
from jobcast.web.metrics import STREAMS, stream_refused

log = logging.getLogger(__name__)

RETRY_AFTER = "5"


class TooManyStreams(HTTPException):
    """429 or 503 with a Retry-After header."""

    def __init__(self, code: int, description: str):
        """Build the error with its status code and message."""
        super().__init__(description)
        self.code = code

    def get_headers(self, environ=None, scope=None):
        """Add Retry-After so well-behaved clients back off."""
        return [*super().get_headers(environ, scope), ("Retry-After", RETRY_AFTER)]


class TooManyRequests(HTTPException):
    """429 with the seconds to wait in Retry-After."""

    code = 429

    def __init__(self, description: str, retry_after: float):
        """Build the error; ``retry_after`` is rounded up to whole seconds (at least 1)."""
        super().__init__(description)
        self.retry_after = max(1, math.ceil(retry_after))

    def get_headers(self, environ=None, scope=None):
        """Say when to come back."""
        return [*super().get_headers(environ, scope), ("Retry-After", str(self.retry_after))]


class ClientRate:
    """A per-client rate: a token bucket of ``per_minute`` tokens per client address, refilled
    evenly over a minute (so a burst of ``per_minute``, then one every 60/per_minute s).

    Per web process, in memory: nothing costs a Redis round trip. At most ``max_clients``
    buckets are kept (an attacker with many addresses cannot grow it without bound): past
    that, buckets that have refilled are dropped, then the oldest that still have a token,
    the throttled last (:meth:`_prune`). ``per_minute`` 0: no limit.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000):
        """No client has spent anything yet."""
        self.per_minute = per_minute
        self.clock = clock
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}  # client: (tokens, when)

    def _tokens(self, client: str, now: float) -> float:
        """The client's tokens now."""
        tokens, when = self.buckets.get(client, (self.per_minute, now))
        return min(self.per_minute, tokens + (now - when) * self.per_minute / 60)

    def wait(self, client: str) -> float:
        """Seconds until ``client`` may go on (0: now)."""
        if not self.per_minute:
            return 0.0
        missing = 1 - self._tokens(client, self.clock())
        return max(0.0, missing * 60 / self.per_minute)

    def take(self, client: str) -> float:
        """Spend one of ``client``'s tokens if it has one and return 0; else the seconds to
        wait (nothing spent)."""
        if not self.per_minute:
            return 0.0
        now = self.clock()
        tokens = self._tokens(client, now)
        if tokens < 1:
            return (1 - tokens) * 60 / self.per_minute
        self.buckets.pop(client, None)  # re-inserted last: the dict stays oldest first
        self.buckets[client] = (tokens - 1, now)
        if len(self.buckets) > self.max_clients:
            self._prune(now)
        return 0.0

    def give_back(self, client: str) -> None:
        """Return the token ``client`` just spent on something that did not happen after all
        (a job refused as invalid: a creation, not an attempt, is what the rate counts)."""
        if not self.per_minute or client not in self.buckets:
            return
        now = self.clock()
        self.buckets[client] = (min(self.per_minute, self._tokens(client, now) + 1), now)

    def _prune(self, now: float) -> None:
        """Make room for a tenth of ``max_clients`` (so a scan comes once per that many new
        clients, not with each): drop the buckets that have refilled (as good as absent), then
        the oldest that still have a token, and only then the oldest that are held back, so
        that many addresses spending a little each cannot free one that is throttled."""
        room = self.max_clients - self.max_clients // 10
        for client in [c for c in self.buckets if self._tokens(c, now) >= self.per_minute]:
            del self.buckets[client]
        if len(self.buckets) > room:
            for client in [c for c in self.buckets if self._tokens(c, now) >= 1]:
                del self.buckets[client]
                if len(self.buckets) <= room:
                    break
        while len(self.buckets) > room:
            del self.buckets[next(iter(self.buckets))]


class StreamLimiter:
    """Counts open streams per client address and per process."""

    def __init__(self, per_client: int, per_process: int):
        """Set the two caps."""
        self.per_client = per_client
        self.per_process = per_process
        self.by_client: Counter[str] = Counter()
        self.total = 0

    def _full(self, client: str) -> str | None:
        """Why a new stream of ``client`` would be refused (a refusal reason), or None."""
        if self.total >= self.per_process:
            return "per_process"
        if self.per_client and self.by_client[client] >= self.per_client:
            return "per_client"
        return None

    def acquire(self, client: str) -> None:
        """Count a new stream, or raise 503 (process full) / 429 (client over its share)."""
        reason = self._full(client)
        if reason is not None:
            stream_refused(reason)
            if reason == "per_process":
                raise TooManyStreams(503, f"this server holds its maximum of {self.per_process} streams")
            raise TooManyStreams(429, f"at most {self.per_client} concurrent streams per client")
        self.by_client[client] += 1
        self.total += 1
        STREAMS.inc()

    def room(self, client: str) -> bool:
        """Whether :meth:`acquire` would count a stream of ``client`` now, rather than refuse."""
        return self._full(client) is None

    def release(self, client: str) -> None:
        """Forget a finished stream."""
        self.total -= 1
        STREAMS.dec()
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]


DOWNLOADS = 8
"""Output downloads one process serves at a time: a job's whole output can be large."""
DOWNLOADS_PER_CLIENT = 2
"""Of those, one client address's at a time: a client reading each of its downloads just fast
enough to beat the write timeout would otherwise hold every one."""


class Busy(TooManyStreams):
    """429 or 503 with Retry-After, for what is not a stream (a download)."""


class DownloadLimiter:
    """Counts the output downloads under way, per client address and per process: a job's
    whole output can be large, and a client reading just fast enough to beat the write
    timeout would otherwise hold one for long."""

    def __init__(self, per_client: int, per_process: int):
        """Set the two caps."""
        self.per_client = per_client
        self.per_process = per_process
        self.by_client: Counter[str] = Counter()
        self._lock = threading.Lock()  # (held for no switch of greenlets)

    def acquire(self, client: str) -> None:
        """Count a download of ``client``; 429 or 503 (with Retry-After) when there is no room."""
        with self._lock:
            if self.by_client[client] >= self.per_client:
                raise Busy(429, f"at most {self.per_client} output downloads at once from one "
                                "address")
            if self.by_client.total() >= self.per_process:
                raise Busy(503, f"this server serves at most {self.per_process} output "
                                "downloads at once")
            self.by_client[client] += 1

    def release(self, client: str) -> None:
        """A download of ``client`` has ended: its room is free again."""
        with self._lock:
            self.by_client[client] -= 1
            if self.by_client[client] <= 0:
                del self.by_client[client]


def client_address(config: Settings) -> str:
    """The client's address; with a trusted proxy, the last X-Forwarded-For hop.

    The last hop is the address the trusted proxy itself saw: a proxy that appends to the
    header (nginx's ``$proxy_add_x_forwarded_for``) keeps whatever the client sent in front
    of it, so the first hop is the client's to choose (werkzeug's ProxyFix, x_for=1, does
    the same).
    """
    return client_address_of(config, request.remote_addr, request.headers.get("X-Forwarded-For", ""))


_told_of_proxy = False


def client_address_of(config: Settings, remote: str | None, forwarded: str) -> str:
    """:func:`client_address` from the peer's address and the X-Forwarded-For header."""
    if config.trust_proxy:
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return client_of(last[:64])
    elif forwarded:
        _tell_of_proxy(remote)
    return client_of(remote) if remote else "unknown"


@lru_cache(maxsize=4096)
def client_of(address: str) -> str:
    """The client an address belongs to, as every per-client limit counts it: an IPv4 address
    itself (an IPv4-mapped IPv6 one too), but an IPv6 address's /64.

    One host is commonly given a whole /64 (SLAAC, privacy addresses), so it could otherwise
    spend a fresh address on every request, and go past every per-client limit at will.
    Anything else (a name a proxy wrote) is taken as it is.
    """
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def _tell_of_proxy(remote: str | None) -> None:
    """Warn once per process that a request came through a proxy this server does not trust:
    every client behind it then shares the proxy's address, so one client's failed tokens,
    creates or streams count against all of them (and may lock them all out)."""
    global _told_of_proxy
    if not _told_of_proxy:
        _told_of_proxy = True
        log.warning("requests from %s carry X-Forwarded-For, and JOBCAST_TRUST_PROXY is off: "
                    "every client behind that proxy shares its address for the per-client "
                    "limits and the failed-token throttle; set JOBCAST_TRUST_PROXY=1 if every "
                    "request comes through it", remote)


class StreamSlot:
    """One open stream, counted against the caps until it is released (once)."""

    __slots__ = ("limiter", "client", "released")

    def __init__(self, limiter: StreamLimiter, client: str):
        """Count a stream of ``client``, or raise 429/503."""
        limiter.acquire(client)
        self.limiter = limiter
        self.client = client
        self.released = False

    def release(self) -> None:
        """The stream ended: free its place (idempotent)."""
        if not self.released:
            self.released = True
            self.limiter.release(self.client)
