"""The pages served over plain HTTP to a host name that is not localhost, as on a LAN: there
the browser sends no ``Sec-Fetch-Site`` (only to secure origins), so what tells this site's own
forms from another site's is their ``Origin``, which the page's referrer policy decides. Real
Chromium (told that the name is this machine), real gunicorn."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.browser import LAN_HOST, assert_page_clean, watch
from tests.support.services import WebServer

TOKEN = "a-token-for-plain-http-pages"

pytestmark = pytest.mark.slow  # Chromium and gunicorn


@pytest.fixture(scope="module")
def servers(redis_server, logs_dir) -> Iterator[dict[str, WebServer]]:
    """A private server (a token) and an open one that answers ``LAN_HOST``."""
    private = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-lan-private.log",
                        JOBCAST_TOKEN=TOKEN).start()
    open_ = WebServer(redis_server.url, workers=1, log_path=logs_dir / "web-lan-open.log",
                      JOBCAST_ALLOWED_HOSTS=LAN_HOST).start()
    yield {"private": private, "open": open_}
    private.stop()
    open_.stop()


def test_a_browser_on_plain_http_logs_in_with_the_token_form_and_out_again(lan_browser, servers):
    """A review's finding: the page's `Referrer-Policy: no-referrer` made the browser send
    `Origin: null` with the form, which the login refused as another site's (and the logout,
    whose form posts the same way)."""
    base = f"http://{LAN_HOST}:{servers['private'].port}"
    context = lan_browser.new_context()
    try:
        page = watch(context.new_page())
        page.goto(f"{base}/login?next=/")
        page.fill("#token", TOKEN)
        page.click("#login button[type=submit]")
        page.wait_for_url(f"{base}/", timeout=10000)
        page.wait_for_selector("#jobs")
        page.click("#logout button[type=submit]")
        page.wait_for_url(f"{base}/login*", timeout=10000)
        assert page.locator("#token").is_visible()
        assert_page_clean(page)
    finally:
        context.close()


def test_the_start_form_of_an_open_server_on_plain_http_creates_the_job(lan_browser, servers):
    """An open server refuses changes from another site's page: its own start form, whose
    post the page's script makes, still creates the job on such an origin."""
    base = f"http://{LAN_HOST}:{servers['open'].port}"
    context = lan_browser.new_context()
    try:
        page = watch(context.new_page())
        page.goto(f"{base}/")
        page.select_option("#task", "sqrt")
        page.locator("fieldset[data-task='sqrt'] input[name='n']").fill("3")
        page.locator("fieldset[data-task='sqrt'] input[name='interval']").fill("0")
        page.click("#start button[type=submit]")
        page.wait_for_url(f"{base}/jobs/*", timeout=10000)  # the job's page: it was created
        assert_page_clean(page)
    finally:
        context.close()
