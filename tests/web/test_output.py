"""GET /api/jobs/<id>/output against the real gunicorn: a job's output as a streamed text
download, one attempt of it, bad input, a trimmed log, a private server.

The logs are written here with the worker's own append script (JobLog.append_many), so each
test states exactly what the job printed.
"""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from jobcast.core.joblog import Entry, JobLog
from jobcast.web.frames import HTML, SSE, TEXT

TOKEN = "output-t0ken"  # the private gunicorn's (tests/web/conftest.py)


def printed(text: str, attempt: int, stream: str = "stdout", **extra) -> tuple[str, dict, float]:
    return ("log", {"stream": stream, "text": text, **extra, "attempt": attempt}, 1.0)


def job_with_output(redis, lines_per_attempt: list[list[tuple]]) -> str:
    """A job whose attempts printed ``lines_per_attempt``, a value after each attempt's lines."""
    job_id = uuid.uuid4().hex
    jlog = JobLog(redis, job_id)
    jlog.create("t", {}, None)
    for k, lines in enumerate(lines_per_attempt, start=1):
        if k > 1:
            jlog.retrying("boom")
        jlog.started("w", k)
        for start in range(0, len(lines), 500):
            jlog.append_many(lines[start:start + 500])
        jlog.value(0, "v")
    jlog.finished()
    return job_id


def test_the_output_downloads_as_text_streamed_with_each_attempt_marked(http, redis):
    job_id = job_with_output(redis, [
        [printed("a1", 1), printed("tick", 1, partial=True), printed(" tock", 1),
         printed("disk low", 1, stream="logging", level="WARNING", logger="user")],
        [printed("a2", 2), printed("oops", 2, stream="stderr")]])
    with httpx.stream("GET", http.base_url.join(f"/api/jobs/{job_id}/output"), timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.headers["transfer-encoding"] == "chunked"   # streamed, not built in memory
        assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-output.txt"'
        text = r.read().decode()
    assert text == "a1\ntick tock\nWARNING user: disk low\n── attempt 2 ──\na2\noops\n"
    assert http.get(f"/api/jobs/{job_id}/output?attempt=2").text == "a2\noops\n"
    assert http.get(f"/api/jobs/{job_id}/output?attempt=3").text == ""


@pytest.mark.parametrize("query", ["attempt=x", "attempt=0", "attempt=-1"])
def test_a_bad_attempt_is_400_naming_it(http, redis, query):
    job_id = job_with_output(redis, [[printed("a1", 1)]])
    r = http.get(f"/api/jobs/{job_id}/output?{query}")
    assert r.status_code == 400 and r.json()["field"] == "attempt"


def test_unknown_and_malformed_ids_are_404_and_400(http):
    assert http.get(f"/api/jobs/{uuid.uuid4().hex}/output").status_code == 404
    assert http.get("/api/jobs/no.pe/output").status_code == 400


def test_a_long_output_is_read_page_by_page_and_whole(http, redis):
    job_id = job_with_output(redis, [[printed(f"line {k}", 1) for k in range(1_234)]])
    lines = http.get(f"/api/jobs/{job_id}/output").text.splitlines()
    assert lines == [f"line {k}" for k in range(1_234)]


def test_a_trimmed_log_says_where_the_output_it_keeps_begins(http, redis, web):
    job_id = job_with_output(redis, [[printed(f"line {k}", 1) for k in range(20)]])
    jlog = JobLog(redis, job_id)
    # As a log past the web's cap (JOBCAST_LOG_MAXLEN) that Redis has trimmed.
    redis.hset(jlog.keys.meta, "seq", 100_020)
    redis.xtrim(jlog.keys.log, maxlen=10, approximate=False)
    first = next(jlog.entries()).seq
    text = http.get(f"/api/jobs/{job_id}/output").text
    assert text.splitlines()[0] == (f"[jobcast] the log was trimmed: output before entry {first} "
                                    "is no longer kept")
    assert text.splitlines()[-1] == "line 19"


def test_a_private_servers_download_needs_the_token_or_the_jobs_view_link(private, redis):
    job_id = job_with_output(redis, [[printed("secret", 1)]])
    url = f"{private.url}/api/jobs/{job_id}/output"
    assert httpx.get(url).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    links = httpx.get(f"{private.url}/api/jobs/{job_id}/link", headers=auth).json()["urls"]
    sig = parse_qs(urlsplit(links["status"]).query)["sig"][0]
    assert httpx.get(url, params={"sig": sig}).text == "secret\n"
    assert httpx.get(url, headers=auth).text == "secret\n"
    other = job_with_output(redis, [[printed("other", 1)]])
    assert httpx.get(f"{private.url}/api/jobs/{other}/output", params={"sig": sig}).status_code == 403


def test_an_output_line_is_an_sse_log_event_and_nothing_on_the_text_and_html_streams():
    raw = b'{"seq":7,"kind":"log","ts":1.0,"stream":"stdout","text":"<b>1</b>","attempt":1}'
    entry = Entry.parse(raw)
    assert SSE.encode(entry) == b"id: 7\nevent: log\ndata: " + raw + b"\n\n"
    assert TEXT.encode(entry) == b"" and HTML.encode(entry) == b""


def test_one_address_holds_at_most_two_downloads_and_the_others_still_get_theirs(client, redis):
    """A security review's finding: eight downloads read just fast enough to beat the write
    timeout held every download of the process, so every other client got 503."""
    job_id = job_with_output(redis, [[printed(f"line {i}", 1) for i in range(10)]])
    url = f"/api/jobs/{job_id}/output"

    def download(address: str):
        """A download begun from ``address`` and not read yet."""
        return client.get(url, environ_base={"REMOTE_ADDR": address}, buffered=False)

    held = [download("10.0.0.1"), download("10.0.0.1")]
    assert [r.status_code for r in held] == [200, 200]
    third = download("10.0.0.1")
    assert third.status_code == 429 and third.headers["Retry-After"], third.json
    other = download("10.0.0.2")
    assert other.status_code == 200 and b"line 9" in b"".join(other.response)
    other.close()
    held.pop().close()
    again = download("10.0.0.1")
    assert again.status_code == 200, "an ended download's room is free again"
    for r in (again, *held, third):
        r.close()


def test_a_download_that_takes_too_long_is_cut_and_says_so(client, redis, monkeypatch):
    """A security review's finding: a few clients reading just fast enough to beat the write
    timeout could hold every download of the process for as long as they liked."""
    from jobcast.web import output

    job_id = job_with_output(redis, [[printed(f"line {k}", 1) for k in range(1_234)]])
    monkeypatch.setattr(output, "DOWNLOAD_TIME", 0.0)
    r = client.get(f"/api/jobs/{job_id}/output", buffered=False,
                   environ_base={"REMOTE_ADDR": "10.7.7.7"})
    assert r.status_code == 200
    got = b""
    # Raised to the server as a client gone: it closes the connection with no last chunk, so
    # the client sees an incomplete download, not a whole file.
    with pytest.raises(BrokenPipeError):
        for data in r.response:
            got += data
    r.close()
    assert got.endswith(b"was cut here: it is incomplete\n") and b"line 1233" not in got
    downloads = client.application.extensions["jobcast"].downloads
    assert "10.7.7.7" not in downloads.by_client, "its room is free again"


def test_a_process_serves_at_most_eight_downloads_then_503_with_retry_after(client, redis):
    """README's promise: output downloads are capped per process (they can be large), and the
    one over the cap is told when to come back; an ended one frees its room."""
    from jobcast.web.limits import DOWNLOADS, DOWNLOADS_PER_CLIENT

    job_id = job_with_output(redis, [[printed(f"line {i}", 1) for i in range(10)]])
    url = f"/api/jobs/{job_id}/output"

    def download(n: int):
        """A download begun from the n-th address and not read yet."""
        return client.get(url, environ_base={"REMOTE_ADDR": f"10.0.1.{n}"}, buffered=False)

    held = [download(n // DOWNLOADS_PER_CLIENT) for n in range(DOWNLOADS)]
    assert [r.status_code for r in held] == [200] * DOWNLOADS
    over = download(100)  # an address of its own: the process's cap, not the client's
    assert over.status_code == 503 and over.headers["Retry-After"], over.json
    assert over.json["error"] == "service_unavailable" and str(DOWNLOADS) in over.json["message"]
    held.pop().close()
    again = download(100)
    assert again.status_code == 200 and b"line 9" in b"".join(again.response)
    for r in (again, *reversed(held), over):  # (the test client's contexts: last in, first out)
        r.close()
