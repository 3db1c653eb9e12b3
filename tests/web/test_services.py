"""The web app's lifecycle: services start once per process at the first request, and stop in
one place; creating the app or reading its state starts nothing."""

from __future__ import annotations

from jobcast.web import services


def test_creating_the_app_starts_no_service(app):
    st = app.extensions["jobcast"]
    assert st.relay is None and st.watchdog is None and st.presence is None


def test_the_first_request_starts_each_service_once(app):
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    st = app.extensions["jobcast"]
    relay, watchdog, presence = st.relay, st.watchdog, st.presence
    assert relay is not None and watchdog._thread.is_alive() and presence._thread.is_alive()
    assert client.get("/readyz").status_code == 200
    assert (st.relay, st.watchdog, st.presence) == (relay, watchdog, presence)
    with app.app_context():
        assert services.state() is st
    services.stop(st)


def test_stop_ends_the_streams_and_the_background_threads(app):
    app.test_client().get("/healthz")
    st = app.extensions["jobcast"]
    services.stop(st)
    assert st.relay.closing
    st.watchdog._thread.join(10)
    st.presence._thread.join(10)
    assert not st.watchdog._thread.is_alive() and not st.presence._thread.is_alive()
    services.stop(st)  # a second stop (SIGTERM, then the worker's exit) is harmless


def test_stop_before_start_does_nothing(app):
    st = app.extensions["jobcast"]
    services.stop(st)  # raises nothing, starts nothing
    assert st.relay is None and st.watchdog is None and st.presence is None
    # Nor does it keep the services from starting at the first request.
    assert app.test_client().get("/healthz").status_code == 200
    assert st.relay is not None and not st.relay.closing and st.watchdog._thread.is_alive()
