"""An existing Flask app with Jobcast mounted: enqueue an RQ job, then watch it live.

Run (from this folder):  gunicorn -k gevent app:app   and   rq worker -w jobcast.Worker default jobcast
"""

import os

from flask import Flask, redirect, url_for
from redis import Redis
from rq import Queue

import jobcast
from jobcast.core.settings import Settings
from jobs import squares

app = Flask(__name__)
queue = Queue(connection=Redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0")))
# Job pages, streams and JSON API under /jobcast, for the jobs of this queue (RQ's "default"):
# Jobcast opens and cancels only the jobs of the queues it is given (JOBCAST_QUEUES), and the
# jobs it enqueued itself (JOBCAST_QUEUE, "jobcast").
jobcast.init_app(app, url_prefix="/jobcast", config=Settings(queues=queue.name))


@app.get("/")
def home():
    return f'<form method="post" action="{url_for("start")}"><button>Compute squares</button></form>'


@app.post("/squares")
def start():
    job = queue.enqueue(squares, 20)  # plain RQ: any function
    return redirect(url_for("jobcast.job_page", job_id=job.id))
