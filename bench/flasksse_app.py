"""The comparison: flask-sse 1.0 as documented, one Redis pub/sub connection per viewer.

Served by the same gunicorn settings as Jobcast (web/gunicorn.conf.py: gevent, 10,000
connections per worker), e.g. ``gunicorn -c web/gunicorn.conf.py bench.flasksse_app:app``.
A viewer of channel C reads ``/stream?channel=C``.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
app.register_blueprint(sse, url_prefix="/stream")


@app.get("/readyz")
def readyz():
    """Ready once the process answers."""
    return "ok"
