"""Jobcast's RQ worker classes (`jobcast worker`'s, and the hook's for `rq worker -w`), against a
real Redis."""

from __future__ import annotations

import threading

import pytest
from redis import Redis

from jobcast.worker.hook import SimpleWorker, Worker
from jobcast.worker.main import JobcastWorker
from tests.conftest import wait_for


@pytest.mark.parametrize("worker_class", [JobcastWorker, Worker, SimpleWorker])
def test_a_warm_shutdown_ends_the_pubsub_thread_even_when_the_unsubscribe_reply_wakes_it_first(
        redis: Redis, worker_class):
    worker = worker_class(["jobcast-test-unsubscribe"], connection=redis)
    worker.subscribe()
    pubsub, thread = worker.pubsub, worker.pubsub_thread
    wait_for(lambda: pubsub.subscribed and thread.is_alive(), what="the pubsub thread")
    send = pubsub.unsubscribe

    def unsubscribe_and_let_the_reply_arrive(*args):
        """RQ's race, made certain: the thread handles the reply before anything else."""
        send(*args)
        wait_for(lambda: not pubsub.subscribed, what="the thread to handle the reply")

    pubsub.unsubscribe = unsubscribe_and_let_the_reply_arrive
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopping.start()
    # RQ's own unsubscribe, with redis-py 8.2, waits here for the thread's 60 s read.
    wait_for(lambda: not stopping.is_alive(), timeout=10, what="unsubscribe to return")
    assert not thread.is_alive()
