"""Reading the job page in a browser: what it holds and shows, and what to wait for
(tests/web/test_browser*.py, tests/test_examples.py)."""

from __future__ import annotations

import os
import shutil

import pytest

DONE = "() => document.getElementById('end')?.textContent === 'Done'"
PLAIN_DONE = "() => document.getElementById('latest')?.textContent === 'Done'"
"""The plain page says Done (null-safe: a click's navigation may not have replaced the page
the predicate first runs in)."""
LIVE_VALUE = ("() => { const p = window.jobcastPage(); "
              "return p.connection === 'live' && p.values.length > 0; }")


def model(pg) -> dict:
    """What the job page holds (window.jobcastPage())."""
    return pg.evaluate("window.jobcastPage()")


def wait_values(pg, count: int, timeout: float = 30000) -> None:
    """Wait until the job page holds ``count`` values."""
    pg.wait_for_function(f"() => window.jobcastPage().values.length >= {count}", timeout=timeout)


def plain_list(pg) -> list[list]:
    """The plain page's list: [value index, text] per item."""
    return pg.evaluate("""() => [...document.querySelectorAll('#output li')]
                              .map(li => [li.dataset.i === undefined ? null : +li.dataset.i, li.textContent])""")


def plain_notes(pg) -> list[str]:
    """The plain page's notes (values no longer kept, a reset)."""
    return pg.locator("p.note").all_text_contents()


def dom(pg) -> dict:
    """What the job page shows, read from the DOM in one go."""
    return pg.evaluate("""() => {
        const $ = id => document.getElementById(id);
        return {
          latest: $('latest').textContent, end: $('end').textContent,
          status: $('status').textContent, worker: $('worker').textContent,
          elapsed: $('elapsed').textContent, viewers: $('viewers').textContent,
          progress: $('progress').value, progressMax: $('progress').max,
          progressText: $('progress-text').textContent,
          connection: $('connection').dataset.state,
          chartPoints: +($('chart').dataset.points || 0), chartBuckets: +($('chart').dataset.buckets || 0),
          chartLabel: $('chart').getAttribute('aria-label'),
          rows: [...document.querySelectorAll('#log li')].map(li => [+li.dataset.i, li.lastChild.textContent]),
        };
    }""")


# -- headless Chromium -------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


LAN_HOST = "jobcast.test"
"""A host name the LAN browser (tests/web/conftest.py ``lan_browser``) finds at 127.0.0.1."""


def playwright_sync_api():
    """Playwright's sync API. Without it a browser test fails, never skips: browser behaviour
    is tested in a real Chromium, and the README's test command installs both."""
    try:
        import playwright.sync_api as api
    except ImportError:
        pytest.fail("playwright is not installed: run the README's test command (make test)")
    return api


def chromium_path() -> str:
    """Debian's chromium (the README's test command installs it)."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is not installed: run the README's test command (make test)")
    return path


def is_csp_violation(text: str) -> bool:
    """Chromium's console message for anything the Content-Security-Policy blocked."""
    return "Content Security Policy" in text


def watch(pg, *, accept_dialogs: bool = False):
    """Record on ``pg`` its dialogs as (type, message), uncaught page errors and CSP violations
    (any frame). Dialogs are dismissed, or accepted with ``accept_dialogs`` (a confirm to say
    yes to, as the Stop button's)."""
    pg.dialogs = []
    pg.errors = []
    pg.csp = []

    def dialog(d) -> None:
        """Remember the dialog, then answer it."""
        pg.dialogs.append((d.type, d.message))
        d.accept() if accept_dialogs else d.dismiss()

    pg.on("dialog", dialog)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.csp.append(m.text) if is_csp_violation(m.text) else None)
    return pg


def assert_page_clean(pg, csp: bool = True) -> None:
    """No uncaught errors in a watched page, and (with ``csp``) no CSP violations."""
    assert pg.errors == [], f"uncaught errors in the page: {pg.errors}"
    if csp:
        assert pg.csp == [], f"Content-Security-Policy violations: {pg.csp}"
