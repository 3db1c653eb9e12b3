"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, jsonify
from redis.exceptions import RedisError

from web import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive: no dependency is checked."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Ready when Redis (and the stream store) answers a PING and this process's hub is
    subscribed; 503 otherwise.

    The first probe also starts the hub, so a process is subscribed before it is sent viewers.
    """
    st = state()
    try:
        st.redis.ping()
        if st.streams is not st.redis:
            st.streams.ping()
    except RedisError as exc:
        return jsonify(status="unavailable", reason=f"redis: {exc}"), 503
    if not st.hub.wait_ready(2.0):
        return jsonify(status="unavailable", reason="hub: not yet subscribed to Redis"), 503
    return jsonify(status="ready")
