"""Authentication hardening (issue 23): the token as settings read it, the key that signs links
and sessions, throttled failures, the token form's `next`, logging out. Flask's test client
on the session's Redis: no server process."""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid

import pytest
from itsdangerous import BadSignature, URLSafeTimedSerializer

from jobcast.core.joblog import JobLog
from jobcast.core.secret import signing_key
from jobcast.core.settings import Settings
from jobcast.web.security import SESSION_COOKIE, SESSION_SALT

TOKEN = "a-token-long-enough-to-pass"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings(redis_server):
    """Settings of a private server (a token) on the session's Redis; ``**changes`` win."""

    def make(**changes) -> Settings:
        """The settings, with ``changes``."""
        return Settings(**{"redis_url": redis_server.url, "token": TOKEN, **changes})

    return make


@pytest.fixture
def client(settings, make_app):
    """A test client of a private server."""
    return make_app({"JOBCAST": settings(), "TESTING": True}).test_client()


def test_a_token_with_a_trailing_space_in_the_environment_still_works_as_a_bearer(
        monkeypatch, redis_server, make_app):
    """Finding 15: a .env line `JOBCAST_TOKEN=tok ` made every bearer request 401."""
    monkeypatch.setenv("JOBCAST_TOKEN", f"{TOKEN} \r")
    cfg = Settings(redis_url=redis_server.url)
    assert cfg.token == TOKEN
    client = make_app({"JOBCAST": cfg, "TESTING": True}).test_client()
    assert client.get("/api/jobs", headers=AUTH).status_code == 200
    # The token form compares the same stripped text.
    assert client.post("/login", data={"token": f" {TOKEN} ", "next": "/"}).status_code == 303


def start_warnings(make_app, caplog, cfg: Settings) -> str:
    """The warnings an app of ``cfg`` logs about its security when it starts serving (its
    first request); making the app alone logs none."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jobcast.web.security"):
        app = make_app({"JOBCAST": cfg, "TESTING": True})
        assert caplog.text == "", "a process that only imports the app is told nothing"
        app.test_client().get("/healthz")
    return caplog.text


def test_a_short_token_is_warned_about_at_start(settings, make_app, caplog):
    """Finding 5: a short token is guessed sooner; the server says so when it starts."""
    assert "JOBCAST_TOKEN is 5 characters long" in start_warnings(make_app, caplog,
                                                                  settings(token="short"))
    assert "JOBCAST_TOKEN" not in start_warnings(make_app, caplog, settings())


def test_the_session_cookie_is_signed_with_the_generated_key_not_the_token(client, settings):
    """Finding 5: the session cookie was signed with the token itself."""
    assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
    cookie = client.get_cookie(SESSION_COOKIE).value
    with pytest.raises(BadSignature):
        URLSafeTimedSerializer(TOKEN, salt=SESSION_SALT).loads(cookie)
    URLSafeTimedSerializer(signing_key(settings()), salt=SESSION_SALT).loads(cookie)
    assert client.get("/api/jobs").status_code == 200, "the cookie reads"


def test_the_session_cookie_holds_no_plain_digest_of_the_token(client):
    """A review's finding: the cookie (signed, not encrypted) carried sha256(token), which
    whoever reads a cookie could test guesses of the token against offline."""
    assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
    cookie = client.get_cookie(SESSION_COOKIE).value
    payload = URLSafeTimedSerializer("unused", salt=SESSION_SALT).loads_unsafe(cookie)[1]
    assert isinstance(payload, str) and payload
    # Nor any part of one (16 hex digits are enough to test guesses with), in hex or base64.
    for digest in (hashlib.sha256, hashlib.sha1, hashlib.md5, hashlib.sha512):
        raw = digest(TOKEN.encode()).digest()
        for text in (raw.hex(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
                     base64.b64encode(raw).decode().rstrip("=")):
            assert not any(text[i:i + 16] in payload for i in range(len(text) - 15)), digest
    assert client.get("/api/jobs").status_code == 200, "the cookie still reads"


def test_a_session_reads_a_jobs_urls_without_minting_a_link_that_outlives_it(client, settings,
                                                                             make_app, redis):
    """A review's finding: a read-only session got a new view link (no expiry) in every
    job's URLs, where /link needs the token; after the token changed, that link still read."""
    job = JobLog(redis, uuid.uuid4().hex)
    job.create("sqrt", {"n": 1}, 1)
    assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
    urls = client.get(f"/api/jobs/{job.job_id}").json["urls"]
    assert not any("sig=" in url for url in urls.values()), urls
    assert client.get(urls["status"]).status_code == 200, "the session reads them as they are"
    # The token's holder still gets links it may hand on.
    fresh = make_app({"JOBCAST": settings(), "TESTING": True}).test_client()
    assert "sig=" in fresh.get(f"/api/jobs/{job.job_id}", headers=AUTH).json["urls"]["status"]


def test_the_link_endpoint_without_a_ttl_mints_links_of_the_servers_link_ttl(
        settings, make_app, redis):
    """A security review's finding: with JOBCAST_LINK_TTL set, `/api/jobs/<id>/link` without
    `ttl` still minted a link that never expires."""
    import time

    job = JobLog(redis, uuid.uuid4().hex)
    job.create("sqrt", {"n": 1}, 1)
    client = make_app({"JOBCAST": settings(link_ttl=600), "TESTING": True}).test_client()
    link = f"/api/jobs/{job.job_id}/link"
    before = time.time()
    expires = client.get(link, headers=AUTH).json["expires"]
    assert before + 599 <= expires <= time.time() + 601
    assert client.get(link, headers=AUTH, query_string={"ttl": 5}).json["expires"] <= time.time() + 6
    assert client.get(link, headers=AUTH, query_string={"ttl": 0}).json["expires"] is None, \
        "0 still asks for none"


def test_a_private_servers_answers_are_kept_by_no_cache_and_its_static_files_are(
        client, settings, make_app, redis):
    """A review's finding: a private server's JSON and pages, read with a session or a
    link, said nothing about caching, so a shared cache could keep them for the next client."""
    job = JobLog(redis, uuid.uuid4().hex)
    job.create("sqrt", {"n": 1}, 1)
    status = client.get(f"/api/jobs/{job.job_id}/link", headers=AUTH).json["urls"]["status"]
    assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
    for url in (status, f"/api/jobs/{job.job_id}", "/api/jobs", "/", f"/jobs/{job.job_id}",
                f"/api/jobs/{job.job_id}/chart", f"/api/jobs/{job.job_id}/output",
                f"/jobs/{job.job_id}/frame", f"/jobs/{job.job_id}/stream"):
        r = client.get(url, buffered=False)
        try:
            assert r.status_code == 200 and r.headers["Cache-Control"] == "private, no-store", \
                (url, r.headers.get("Cache-Control"))
        finally:
            r.close()
    assert "no-store" not in client.get("/static/jobcast.js").headers.get("Cache-Control", "")
    public = make_app({"JOBCAST": settings(read="public"), "TESTING": True}).test_client()
    assert "Cache-Control" not in public.get(f"/api/jobs/{job.job_id}").headers


WRONG = {"Authorization": "Bearer not-the-token"}


def test_failed_bearer_tokens_are_throttled_per_client_with_retry_after(settings, make_app, clock):
    """Finding 5: 200 wrong tokens as bearer took 0.27 s, with no throttling."""
    app = make_app({"JOBCAST": settings(auth_failures=3), "TESTING": True})
    app.extensions["jobcast"].auth_failures.clock = clock
    c = app.test_client()
    assert [c.get("/api/jobs", headers=WRONG).status_code for _ in range(3)] == [403] * 3
    r = c.get("/api/jobs", headers=WRONG)
    assert r.status_code == 429 and r.json["error"] == "too_many_requests"
    assert r.headers["Retry-After"] == "20", "3 a minute: the next one is due in 20 s"
    # While the client waits, no credential it sends is checked, the right one included.
    assert c.get("/api/jobs", headers=AUTH).status_code == 429
    assert c.post("/api/jobs", headers=AUTH, json={"task": "sqrt"}).status_code == 429
    # Another address is not held back, and requests without credentials are not counted.
    other = {"REMOTE_ADDR": "10.9.9.9"}
    assert c.get("/api/jobs", headers=AUTH, environ_base=other).status_code == 200
    assert c.get("/api/jobs").status_code == 401
    clock.advance(20)
    assert c.get("/api/jobs", headers=AUTH).status_code == 200
    assert c.get("/api/jobs", headers=WRONG).status_code == 403
    assert c.get("/api/jobs", headers=WRONG).status_code == 429


def test_a_wrong_bearer_token_is_a_403_that_says_so_and_a_missing_one_a_401(client, redis):
    """A review's finding: a wrong token got the 401 of a missing one ("needs Authorization:
    Bearer <token>"), so a client could not tell a mistyped token from a forgotten one."""
    jlog = JobLog(redis, uuid.uuid4().hex)
    jlog.create("sqrt", {}, 1)
    requests = [("GET", "/api/jobs"), ("POST", "/api/jobs"), ("GET", f"/jobs/{jlog.job_id}"),
                ("GET", f"/jobs/{jlog.job_id}/stream"), ("GET", f"/api/jobs/{jlog.job_id}"),
                ("POST", f"/api/jobs/{jlog.job_id}/cancel"), ("GET", "/metrics")]
    for method, path in requests:
        wrong = client.open(path, method=method, headers=WRONG, json={"task": "sqrt"})
        assert wrong.status_code == 403, (method, path)
        assert (wrong.json["error"], wrong.json["reason"]) == ("forbidden", "bad_token")
        assert "WWW-Authenticate" not in wrong.headers
        missing = client.open(path, method=method, json={"task": "sqrt"})
        assert missing.status_code == 401, (method, path)
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="jobcast"'
    assert client.get("/api/jobs", headers=AUTH).status_code == 200


def test_a_proxys_basic_credentials_are_ignored_and_never_lock_out_a_session(settings,
                                                                              make_app):
    """A review's finding: any Authorization header that was not our bearer token counted as
    a failed authentication, so a browser behind a basic-auth proxy (nginx passes the header
    on) was refused 429 after JOBCAST_AUTH_FAILURES pages, its good session cookie unread."""
    c = make_app({"JOBCAST": settings(auth_failures=3), "TESTING": True}).test_client()
    assert c.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert [c.get("/api/jobs", headers=basic).status_code for _ in range(12)] == [200] * 12
    assert c.post("/api/jobs", headers=basic, json={"task": "sqrt"}).status_code == 401
    # A wrong bearer token still counts: three, then 429.
    assert [c.get("/api/jobs", headers=WRONG).status_code for _ in range(4)][-1] == 429


def test_wrong_tokens_in_the_form_are_throttled_too(settings, make_app):
    """Finding 5: 200 wrong tokens at /login took 0.27 s, with no throttling."""
    c = make_app({"JOBCAST": settings(auth_failures=2), "TESTING": True}).test_client()
    for _ in range(2):
        assert c.post("/login", data={"token": "guess", "next": "/"}).status_code == 403
    r = c.post("/login", data={"token": TOKEN, "next": "/"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 30
    assert "text/html" in r.content_type and "Too many wrong tokens" in r.text
    assert c.get("/api/jobs", headers=WRONG).status_code == 429, "one count per client"


def test_wrong_tokens_under_a_name_not_the_servers_never_lock_out_its_local_clients(
        settings, make_app):
    """A security review's finding: a page on another site, rebound by DNS to a private
    server on this machine, posted wrong tokens as its own origin; they counted against
    127.0.0.1, and the right token from the local CLI then got 429 for as long as it went on."""
    c = make_app({"JOBCAST": settings(auth_failures=3), "TESTING": True}).test_client()
    rebound = {"Host": "rebind.attacker.example:8000", "Sec-Fetch-Site": "same-origin"}
    assert [c.post("/login", data={"token": f"guess{i}", "next": "/"}, headers=rebound).status_code
            for i in range(4)] == [403, 403, 403, 429]
    # The local clients, which call the server by its own names, are not held back...
    assert c.get("/api/jobs", headers=AUTH).status_code == 200
    assert c.get("/api/jobs", headers={**AUTH, "Host": "127.0.0.1:8000"}).status_code == 200
    # ...and another unknown name gets no fresh guesses: the address's unknown names share one.
    other = {**WRONG, "Host": "another.attacker.example"}
    assert c.get("/api/jobs", headers=other).status_code == 429
    assert c.get("/api/jobs", headers={**AUTH, "Host": "another.attacker.example"}).status_code == 429


def test_an_open_server_says_at_start_that_anyone_can_run_jobs(settings, make_app, caplog):
    """Finding 6: with no token anyone who reaches the port creates, cancels and reads jobs."""
    said = start_warnings(make_app, caplog, settings(token=""))
    assert "anyone who can reach this server can create, cancel and read every job" in said
    assert "anyone" not in start_warnings(make_app, caplog, settings())


@pytest.mark.parametrize("target", ["/jobs\r\nSet-Cookie: x=1", "/a\nb", "/\x00", "/\x7f"])
def test_a_next_with_control_characters_is_ignored(client, target):
    """Finding 14: /login's `next` with CR/LF gave a 500 (it went into the Location header)."""
    r = client.post("/login", data={"token": TOKEN, "next": target})
    assert r.status_code == 303 and r.headers["Location"] == "/"
    form = client.get("/login", query_string={"next": target})
    assert form.status_code == 200 and 'name="next" value="/"' in form.text


def test_logging_out_clears_the_session_cookie_and_every_page_offers_it(client):
    """Finding 18: the browser kept the token for ever, and there was no way to log out."""
    assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
    home = client.get("/")
    assert home.status_code == 200
    assert '<form id="logout" method="post" action="/logout">' in home.text
    r = client.post("/logout")
    assert r.status_code == 303 and r.headers["Location"] == "/login"
    cleared = r.headers["Set-Cookie"]
    assert cleared.startswith("jobcast_session=;") and "Expires=Thu, 01 Jan 1970" in cleared
    assert client.get("/api/jobs").status_code == 401 and client.get("/").status_code == 401
    assert 'id="logout"' not in client.get("/login").text, "no button on the token form"


def test_a_server_without_a_token_offers_no_log_out(settings, make_app):
    client = make_app({"JOBCAST": settings(token=""), "TESTING": True}).test_client()
    assert 'id="logout"' not in client.get("/").text


def test_the_pages_keep_the_token_for_the_tab_only_and_forget_it_on_log_out(client):
    """Finding 18: the admin token was kept in localStorage, for ever."""
    token_js = client.get("/static/token.js").text
    login_js = client.get("/static/login.js").text
    assert "localStorage.setItem" not in token_js + login_js
    assert "sessionStorage.setItem" in token_js and 'localStorage.removeItem(KEY)' in token_js
    assert 'event.target.id === "logout"' in token_js


def test_a_view_link_does_not_open_a_later_job_given_the_same_id(client, redis):
    """Finding 20: a link bound only the job id, so a link for an RQ job with a chosen id also
    opened any later job given that id."""
    job_id = f"report-{uuid.uuid4().hex[:8]}"  # an id RQ lets anyone choose
    first = JobLog(redis, job_id)
    first.create("sqrt", {"n": 1}, 1)
    status = client.get(f"/api/jobs/{job_id}/link", headers=AUTH).json["urls"]["status"]
    assert client.get(status).status_code == 200
    redis.delete(first.keys.meta, first.keys.log)
    JobLog(redis, job_id).create("sqrt", {"n": 2}, 2)
    r = client.get(status)
    assert r.status_code == 403 and r.json["reason"] == "other_job"


@pytest.mark.parametrize("read_mode", ["public", "private"])
def test_a_401_says_what_the_request_needs_not_another_operations_need(settings, make_app,
                                                                       read_mode):
    """A review's finding: a cancel without the token was told "creating jobs needs …" in
    public mode, and a create "reading needs …" in private mode."""
    c = make_app({"JOBCAST": settings(read=read_mode), "TESTING": True}).test_client()
    job = "a" * 32
    for method, path in (("post", "/api/jobs"), ("post", f"/api/jobs/{job}/cancel"),
                         ("get", f"/api/jobs/{job}/link")):
        r = getattr(c, method)(path, json={"task": "sqrt"})
        assert r.status_code == 401, path
        assert r.json["message"] == ("this request needs Authorization: Bearer <token> "
                                     "(JOBCAST_TOKEN)"), path
    if read_mode == "private":
        assert "reading needs" in c.get("/api/jobs").json["message"]


def test_another_sites_page_cannot_spend_the_browsers_failed_logins_and_lock_out_its_address(
        settings, make_app):
    """A review's finding: a page on any site posted wrong tokens to /login in the background;
    they counted against the browser's address, whose every request with the right token
    then had 429 while the page stayed open."""
    c = make_app({"JOBCAST": settings(auth_failures=2), "TESTING": True}).test_client()
    for headers in ({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
                    {"Origin": "https://evil.example"}, {"Origin": "null"}):
        for _ in range(5):
            r = c.post("/login", data={"token": "guess", "next": "/"}, headers=headers)
            assert r.status_code == 403 and r.json["error"] == "forbidden", headers
            assert r.json["reason"] == "cross_site", headers
            assert "Set-Cookie" not in r.headers
    assert c.get("/api/jobs", headers=AUTH).status_code == 200, "the address is not locked out"
    assert c.post("/login", data={"token": TOKEN, "next": "/"},
                  headers={"Sec-Fetch-Site": "same-origin"}).status_code == 303


def test_another_site_cannot_log_a_browser_out(client):
    """A review's finding: a form on any site could post to /logout, and the browser took the
    cleared cookie (SameSite=Strict keeps a cookie from being sent, not from being set)."""
    assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
                    {"Sec-Fetch-Site": "same-site"}):
        r = client.post("/logout", headers=headers)
        assert r.status_code == 403 and r.json["reason"] == "cross_site", headers
        assert "Set-Cookie" not in r.headers
    assert client.get("/api/jobs").status_code == 200, "still logged in"
    for headers in ({"Origin": "http://localhost"}, {"Sec-Fetch-Site": "same-origin"}, {}):
        assert client.post("/logout", headers=headers).status_code == 303, headers
