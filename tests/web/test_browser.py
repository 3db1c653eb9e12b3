"""The original views in a real headless Chromium, fed from the queue."""

from __future__ import annotations

import math
import os
import shutil

import pytest

from tests.conftest import create_job

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Debian's chromium (the README's test command installs it)."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is not installed: run the README's test command (make test)")
    return path


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    dialogs = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs
    yield pg
    context.close()


def test_plain_page_shows_latest_value_all_values_and_done(page, http, web, workers):
    job_id = create_job(http, "sqrt", n=15, interval=0.1)
    page.goto(f"{web.url}/jobs/{job_id}")
    # Mid-job the latest value is a number and the list is growing.
    page.wait_for_function("document.querySelectorAll('#output li').length >= 3")
    page.wait_for_function("document.getElementById('latest').textContent === 'Done'", timeout=30000)
    items = page.locator("#output li").all_text_contents()
    assert items == ["{}".format(math.sqrt(i)) for i in range(15)]


def test_iframe_page_shows_html_payloads_as_text_and_runs_none(page, http, web, workers):
    job_id = create_job(http, "html", n=3)
    page.goto(f"{web.url}/jobs/{job_id}/framed")
    frame = page.frame_locator("#frame")
    frame.locator("p.end").wait_for(timeout=30000)
    texts = frame.locator("p").all_text_contents()
    assert texts[0] == "0: </p><script>window.pwned=1</script>"
    assert texts[1] == '1: <img src=x onerror="window.pwned=2">'
    assert texts[-1] == "Done"
    inner = page.frames[1]
    assert inner.evaluate("typeof window.pwned") == "undefined"
    assert inner.evaluate("document.querySelectorAll('script, img, svg').length") == 0
    assert page.dialogs == []
    # The streamed document's first chunk linked the stylesheet, so it is applied.
    assert inner.evaluate("document.styleSheets.length") == 1
