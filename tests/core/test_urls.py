"""The job URL scheme: one place names every view of a job."""

from jobcast.core.urls import job_urls


def test_job_urls_name_every_view_under_the_base_and_carry_the_signature():
    assert job_urls("abc", "http://example.org/jc/") == {
        "page": "http://example.org/jc/jobs/abc",
        "stream": "http://example.org/jc/jobs/abc/stream",
        "events": "http://example.org/jc/jobs/abc/events",
        "frame": "http://example.org/jc/jobs/abc/frame",
        "framed": "http://example.org/jc/jobs/abc/framed",
        "status": "http://example.org/jc/api/jobs/abc",
    }
    signed = job_urls("abc", sig="s/1")
    assert signed["page"] == "/jobs/abc?sig=s%2F1" and signed["status"] == "/api/jobs/abc?sig=s%2F1"


def test_an_ipv6_host_is_written_in_brackets_with_its_port():
    """A review's finding: `jobcast up --host ::1` bound gunicorn to "::1:8000", which it read
    as a port of "", and the services restarted until `jobcast up` gave up."""
    from jobcast.core.urls import host_port

    assert host_port("::1", 8000) == "[::1]:8000"
    assert host_port("[::1]", 8000) == "[::1]:8000"
    assert host_port("127.0.0.1", 8000) == "127.0.0.1:8000"
    assert host_port("localhost", 80) == "localhost:80"
