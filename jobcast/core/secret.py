"""The key that signs view links and browser sessions: ``JOBCAST_SECRET``, else one generated
once and shared by every process through Redis. Never the token.

A view link is an HMAC over a job id, so one link lets anyone test guesses of its key offline,
hundreds of thousands a second: keyed by the token, a leaked link would give the token away.
A key of 32 random bytes cannot be guessed. Every process of a deployment (web replicas, the
CLI that prints signed URLs) must sign with the same key, so the first one that needs it
stores a random key in RQ's Redis (``SET NX``, so concurrent starts agree) and every other
one reads it there. Deleting the key (or a ``FLUSHALL``) revokes every link and session once
the web processes restart; set ``JOBCAST_SECRET`` to keep links valid across that.
"""

from __future__ import annotations

import secrets
import threading

from redis import Redis

from jobcast.core.settings import Settings
from jobcast.core.store import redis_client

SECRET_KEY = "jobcast:secret"
"""Where the generated key lives, in the Redis of ``REDIS_URL``."""

_keys: dict[str, str] = {}  # the generated key, by REDIS_URL: read once per process
_lock = threading.Lock()


def signing_key(settings: Settings, redis: Redis | None = None) -> str:
    """The key for view links and sessions: JOBCAST_SECRET, else the deployment's generated one.

    ``redis`` is RQ's Redis (by default a connection to ``settings.redis_url``, closed again);
    a RedisError when it cannot be reached.
    """
    if settings.secret:
        return settings.secret
    url = settings.redis_url
    with _lock:
        if url not in _keys:
            conn = redis if redis is not None else redis_client(url, socket_connect_timeout=5,
                                                                socket_timeout=5)
            try:
                conn.set(SECRET_KEY, secrets.token_hex(32), nx=True)
                _keys[url] = conn.get(SECRET_KEY).decode()
            finally:
                if redis is None:
                    conn.close()
        return _keys[url]
