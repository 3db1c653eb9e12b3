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


def test_a_stream_url_naming_several_hosts_of_a_redis_that_is_no_cluster_says_so(
        redis_server, make_app):
    """A review's finding: such a URL reached redis-py's URL parser, which said "Port could
    not be cast to integer value as '6379,b:6379'"."""
    import pytest
    from redis.exceptions import ClusterError

    from jobcast.core.settings import Settings

    host_port = redis_server.url.split("//")[1].split("/")[0]
    url = f"redis://{host_port},{host_port}/0"
    with pytest.raises(ClusterError, match="names several hosts"):
        make_app({"JOBCAST": Settings(redis_url=redis_server.url, stream_url=url)})
