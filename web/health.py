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
    """Ready when Redis answers a PING; 503 otherwise."""
    try:
        state().redis.ping()
    except RedisError as exc:
        return jsonify(status="unavailable", reason=f"redis: {exc}"), 503
    return jsonify(status="ready")
