"""What monitoring reads: liveness and readiness probes, and the Prometheus scrape."""

from __future__ import annotations

import logging

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from jobcast.core.store import REDIS_ERRORS
from jobcast.web.metrics import render
from jobcast.web.models import Health, reply
from jobcast.web.services import state
from jobcast.web.surface import Answer, private, public, returns

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@public
@returns(Health)
def healthz():
    """The process is alive: no dependency is checked."""
    return reply(Health(status="ok"))


@bp.get("/readyz")
@public
@returns(Health, more={503: Answer("Not ready", model=Health)})
def readyz():
    """Ready when Redis (and the stream store) answers a PING and this process's broker is
    subscribed; 503 otherwise.

    The first probe also starts the relay, so a process is subscribed before it is sent viewers.
    """
    st = state()
    try:
        st.probe.ping()
        if st.streams_probe is not None:
            st.streams_probe.ping()
    except REDIS_ERRORS as exc:  # (a Cluster's "slot not covered" is no RedisError)
        # The error names Redis's host and port: for the log, not for whoever can reach a
        # public probe.
        log.warning("readyz: Redis does not answer: %s", exc)
        return reply(Health(status="unavailable",
                            reason=f"redis: unreachable ({type(exc).__name__})"), 503)
    if not st.relay.wait_ready(2.0):
        return reply(Health(status="unavailable", reason="broker: not yet subscribed to Redis"), 503)
    return reply(Health(status="ready"))


@bp.get("/metrics")
@private
@returns(media="text/plain", description="The metrics")
def metrics():
    """Prometheus text format (every web process's metrics, and RQ's queue at scrape time)."""
    st = state()
    return Response(render(st.redis, st.config.queue_name), content_type=CONTENT_TYPE_LATEST)
