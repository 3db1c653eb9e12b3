"""Redis URLs: the ``redis+sentinel://`` form that redis-py does not parse.

``REDIS_URL`` and ``JOBCAST_STREAM_URL`` take any URL redis-py takes (``redis://``,
``rediss://``, ``unix://``), or a group of Sentinels and the name of the primary they watch::

    redis+sentinel://[[user]:password@]host:port[,host:port…]/<master name>[/<db>][?sentinel_password=…]

``JOBCAST_STREAM_URL`` may also name several nodes of a Redis Cluster, so that a client starts
from whichever answers (a node named alone is a single point of failure for every client made
while it is down)::

    redis://[[user]:password@]host:port,host:port…[/db][?…]

The credentials are the Redis nodes' (a Sentinel rarely has any: ``sentinel_password`` when it
does). A port may be left out (26379, Sentinel's own); an IPv6 address is written in brackets,
``[::1]:26379``. redis-py has no such scheme, and :mod:`urllib.parse` cannot split a list of
hosts, so the URL is read here, by hand, and checked as a setting is: a bad one stops a
service at start-up, naming the variable. Nothing here talks to Redis (the settings import it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from redis.connection import parse_url, to_bool

SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_PORT = 26379

_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\[\]:/,@]+))"
                   r"(?::(?P<port>[0-9]{1,5}))?")


class BadRedisUrl(ValueError):
    """A ``redis+sentinel://`` URL that cannot be read; the message says why."""


@dataclass(frozen=True)
class SentinelTarget:
    """A primary found through Sentinel: where the Sentinels are, and how to talk to it."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` URL."""
    return url.lower().startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Read a ``redis+sentinel://`` URL (see the module's docstring); BadRedisUrl if it is not
    one, or is malformed."""
    if not is_sentinel_url(url):
        raise BadRedisUrl(f"not a {SENTINEL_SCHEME} URL")
    rest = url[len(SENTINEL_SCHEME):]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host(item) for item in hostlist.split(","))
    parts = path.split("/") if path else []
    if not parts or not parts[0] or len(parts) > 2:
        raise BadRedisUrl("name the primary after the hosts: "
                          "redis+sentinel://host:port/<master>[/<db>]")
    master = unquote(parts[0])
    db = 0
    if len(parts) == 2 and parts[1] != "":
        if not parts[1].isdigit():
            raise BadRedisUrl("the database after the primary's name must be a number (percent-"
                          "encode / ? # @ in a password)")
        db = int(parts[1])
    # Decoded as the password in the authority is (unquote): parse_qs would read a "+" as a
    # space, and a base64 secret holds "+".
    options: dict[str, list[str]] = {}
    for item in query.split("&") if query else []:
        name, _, value = item.partition("=")
        options.setdefault(unquote(name), []).append(unquote(value))
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise BadRedisUrl("unknown option(s) in the query: only sentinel_password")
    sentinel_password = options.get("sentinel_password", [None])[-1] or None
    return SentinelTarget(sentinels, master, db, username, password, sentinel_password)


def _host(item: str) -> tuple[str, int]:
    """One ``host[:port]`` of the list."""
    m = _HOST.fullmatch(item.strip())
    if not m:
        # (Quoting it could print part of a password whose / or @ was not percent-encoded.)
        raise BadRedisUrl("a Sentinel is not host:port (an IPv6 address goes in brackets; "
                          "percent-encode / ? # @ in a password)")
    port = int(m.group("port")) if m.group("port") else SENTINEL_PORT
    if not 0 < port < 65536:
        raise BadRedisUrl("a Sentinel's port is out of range")
    return m.group("v6") or m.group("name"), port


def node_urls(url: str) -> list[str]:
    """One URL per host a ``redis://`` or ``rediss://`` URL names (several: a Redis Cluster's
    nodes, each with the URL's credentials, database and options); ``[url]`` for any other."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss"):
        return [url]
    userinfo, at, after = rest.rpartition("@")
    cut = min((i for i in (after.find("/"), after.find("?")) if i >= 0), default=len(after))
    hosts, tail = after[:cut], after[cut:]
    if "," not in hosts:
        return [url]
    return [f"{scheme}{sep}{userinfo}{at}{host.strip()}{tail}" for host in hosts.split(",")]


def check_redis_url(url: str) -> str:
    """``url`` if redis-py, or Jobcast for ``redis+sentinel://``, can use it; BadRedisUrl
    otherwise, whose message quotes no part of the URL: a malformed one may have its password
    where a host or port was looked for."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return url
    try:
        # redis-py's own reading, as it connects (nothing is sent), of each node named
        for node in node_urls(url):
            options = parse_url(node)
    except (ValueError, TypeError):
        raise BadRedisUrl("not a URL redis-py can use: redis://[[user]:password@]host[:port]"
                          "[,host:port…][/db], rediss://… or unix://…/path.sock, with "
                          "/ ? # @ : % , in a password percent-encoded") from None
    if to_bool(options.get("decode_responses")):
        # Every reader of the logs and the queue takes bytes: each request would fail.
        raise BadRedisUrl("decode_responses in a Redis URL is not supported: Jobcast reads "
                          "bytes (remove it from the URL)")
    return url
