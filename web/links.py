"""Signed view links: a URL that lets its holder read one job, optionally until a time.

A link carries ``?sig=<token>``, where the token is an itsdangerous signature over the job's
identity (its id and creation time: an RQ job id can be chosen, and a later job given the same
id is another job, which the link does not open) and the expiry, keyed by ``JOBCAST_SECRET`` or else the deployment's generated key
(:mod:`jobcast.core.secret`), never by the API token.
EventSource cannot send headers, so the signature has to travel in the URL; the pages send
``Referrer-Policy: same-origin`` so it does not leak to other sites.

This module needs no Flask request: the CLI signs the page URL it prints with it.
"""

from __future__ import annotations

import time
from typing import Callable

from itsdangerous import BadSignature, URLSafeSerializer

from jobcast.core.secret import signing_key
from jobcast.core.settings import Settings
from jobcast.core.urls import PARAM

__all__ = ["PARAM", "MAX_TTL", "LinkError", "named_job", "sign", "verify", "view_sig"]

SALT = "jobcast.view-link"
# Longest accepted ?ttl=: ten years; links meant to outlive that can omit the expiry.
MAX_TTL = 10 * 365 * 24 * 3600


class LinkError(Exception):
    """A view link that does not grant access; ``reason`` is one of the REASONS."""

    REASONS = ("invalid", "other_job", "expired")

    def __init__(self, reason: str, message: str):
        """Keep the machine-readable reason next to the message."""
        super().__init__(message)
        self.reason = reason


def _serializer(config: Settings) -> URLSafeSerializer:
    """The serializer for view links (a RedisError when the generated key cannot be read)."""
    return URLSafeSerializer(signing_key(config), salt=SALT)


def sign(config: Settings, job_id: str, created: float | None, ttl: int | None = None, *,
         now: float | None = None) -> str:
    """A signature that lets its holder read the job ``job_id`` created at ``created`` (its
    log's ``created_at``), for ``ttl`` seconds if given."""
    payload: dict[str, object] = {"j": job_id, "c": created}
    if ttl:
        payload["e"] = int((time.time() if now is None else now) + ttl)
    return _serializer(config).dumps(payload)


def named_job(config: Settings, token: str) -> str:
    """The job id a link names, once its signature holds; LinkError ("invalid") if it does
    not. It says nothing of expiry or of which job of that id: :func:`verify` does."""
    try:
        payload = _serializer(config).loads(token)
    except (BadSignature, ValueError):
        raise LinkError("invalid", "the view link's signature is not valid") from None
    job_id = payload.get("j") if isinstance(payload, dict) else None
    if not isinstance(job_id, str):
        raise LinkError("invalid", "the view link's signature is not valid")
    return job_id


def verify(config: Settings, job_id: str, token: str, created: Callable[[], float | None], *,
           now: float | None = None) -> dict:
    """The link's payload if it grants ``job_id`` now; else LinkError with the reason.

    ``created`` reads the job's creation time; it is called only once the signature holds, so
    a forged link costs no Redis read. When the job has no log now, its UnknownJob goes to the
    caller: the link is good for that id, the job it names is gone, and its holder may be
    told so as a token holder would be (404), but never be given another job of that id.
    """
    try:
        payload = _serializer(config).loads(token)
    except (BadSignature, ValueError):
        raise LinkError("invalid", "the view link's signature is not valid") from None
    if not isinstance(payload, dict) or payload.get("j") != job_id:
        raise LinkError("other_job", "the view link is for another job")
    expires = payload.get("e")
    if expires is not None and (time.time() if now is None else now) >= expires:
        raise LinkError("expired", "the view link has expired")
    if payload.get("c") != created():  # UnknownJob: no job of that id now
        raise LinkError("other_job", "the view link is for an earlier job of that id")
    return payload


def view_sig(config: Settings, job_id: str, created: float | None,
             ttl: int | None = None) -> str | None:
    """The signature new URLs of the job ``job_id`` created at ``created`` carry: one in
    private mode, none in public mode.

    ``ttl`` defaults to JOBCAST_LINK_TTL (0: no expiry of its own; the job's log expires).
    """
    if config.read_mode != "private":
        return None
    return sign(config, job_id, created, config.link_ttl if ttl is None else ttl)
