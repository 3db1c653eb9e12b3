"""The app factory: ``create_app()`` builds the Flask app and wires each part with init_app."""

from __future__ import annotations

from typing import Any

from flask import Flask

from jobcast.core.registry import load_user_tasks
from jobcast.core.settings import get_settings
from jobcast.web import (api, bodies, errors, events, fastpath, health, openapi, output, pages,
                         security, services, shutdown, stream)
from jobcast.web.gunicorn_check import check_worker_class


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the Jobcast Flask app. ``test_config`` may set JOBCAST (a Settings), REDIS and
    STREAMS (clients)."""
    # Named for the package: templates and static files live next to it.
    app = Flask(__package__)
    test_config = dict(test_config or {})
    config = test_config.pop("JOBCAST", None) or get_settings()
    redis = test_config.pop("REDIS", None)
    streams = test_config.pop("STREAMS", None)
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=config.max_body,
    )
    app.config.update(test_config)
    load_user_tasks()
    st = services.init_app(app, config, redis, streams)

    # Before shutdown.install, which replaces the SIGTERM handler the check looks at.
    check_worker_class()
    shutdown.install(lambda: services.stop(st), st)
    errors.register(app)
    # Read access, security headers and the login form (JOBCAST_READ; see web/security.py).
    security.install(app)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(output.bp)
    app.register_blueprint(stream.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(pages.bp)
    # Last, so its refusals (408, 413) come before any other check.
    bodies.install(app, config.body_timeout, config.max_body)
    # Public stream requests admitted by Jobcast's gunicorn worker without a Flask request.
    fastpath.init_app(app)
    return app
