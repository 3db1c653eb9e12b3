"""Graceful shutdown: chained onto a gunicorn worker's SIGTERM handler, and only there."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tests.support.wait import wait_for
from jobcast.web import shutdown


class FakeGunicornWorker:
    """Stands in for a gunicorn worker: its SIGTERM handler is a bound method of it."""

    def __init__(self):
        self.signals = []

    def handle_exit(self, signum, frame):
        self.signals.append(signum)


# shutdown.install recognises gunicorn's workers by the module of the handler's owner.
FakeGunicornWorker.__module__ = "gunicorn.workers.fake"


@pytest.fixture
def sigterm(monkeypatch):
    """Restore the test process's SIGTERM handler afterwards; the process has had nothing
    installed (install chains once per process)."""
    monkeypatch.setattr(shutdown, "_installed_in", None)
    monkeypatch.setattr(shutdown, "_stops", {})
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_outside_gunicorn_nothing_is_installed(sigterm):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert shutdown.install(lambda: None, object()) is False
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_reaches_gunicorn_first_then_stops_the_services_off_the_signal_frame(sigterm):
    worker = FakeGunicornWorker()
    signal.signal(signal.SIGTERM, worker.handle_exit)
    stopped = threading.Event()
    ran_in = []

    def stop():
        ran_in.append(threading.current_thread())
        stopped.set()

    app = object()
    assert shutdown.install(stop, app) is True
    assert shutdown.install(stop, app) is True  # once per app: the second chains nothing
    os.kill(os.getpid(), signal.SIGTERM)
    wait_for(stopped.is_set, timeout=5, what="the services to be stopped")
    assert worker.signals == [signal.SIGTERM]
    assert ran_in[0] is not threading.main_thread()


def test_two_apps_in_one_worker_each_end_their_streams_on_sigterm(sigterm):
    """A second reading's finding: installed once per process, the SIGTERM handler ran the
    first app's stop only (a host mounting Jobcast twice)."""
    worker = FakeGunicornWorker()
    signal.signal(signal.SIGTERM, worker.handle_exit)
    stopped = []
    done = threading.Event()

    def stop_of(name):
        """An app's stop, noting it ran."""
        def stop():
            stopped.append(name)
            if len(stopped) == 2:
                done.set()
        return stop

    assert shutdown.install(stop_of("a"), "app a") and shutdown.install(stop_of("b"), "app b")
    os.kill(os.getpid(), signal.SIGTERM)
    wait_for(done.is_set, timeout=5, what="both apps' services to be stopped")
    assert sorted(stopped) == ["a", "b"] and worker.signals == [signal.SIGTERM]


def test_install_from_a_thread_that_is_not_the_main_one_is_refused_not_an_error(sigterm):
    """A second reading's finding: under --preload with gthread, the services start in a
    request's thread, where signal.signal raises: the first request got a 500."""
    worker = FakeGunicornWorker()
    signal.signal(signal.SIGTERM, worker.handle_exit)
    results = []
    thread = threading.Thread(target=lambda: results.append(shutdown.install(lambda: None, 1)))
    thread.start()
    thread.join(5)
    assert results == [False] and signal.getsignal(signal.SIGTERM) == worker.handle_exit
    assert shutdown.install(lambda: None, 1) is True  # the main thread's install still works


def test_spawn_runs_the_function_in_a_thread_without_gevent_patching():
    done = threading.Event()
    shutdown.spawn(done.set)
    assert done.wait(5)
