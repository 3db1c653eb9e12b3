"""Reading the job page in a browser: what it holds and shows, and what to wait for
(tests/web/test_browser*.py, tests/test_examples.py)."""

from __future__ import annotations

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
