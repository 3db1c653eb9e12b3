"""The job page's Output panel in a real headless Chromium, against real gunicorn, `jobcast
worker` and Redis: live lines, stderr and warnings marked, ANSI colours as classes, markup
shown as text (never run, no CSP violation), following the tail until the user scrolls up."""

from __future__ import annotations

from tests.support.jobs import create_job

ROWS = "[...document.querySelectorAll('#output-lines li')]"


def rows(pg) -> list[dict]:
    """The output rows in the DOM: text, stream, warning mark, coloured spans."""
    return pg.evaluate(f"""() => {ROWS}.map(li => ({{
        text: (li.querySelector('.t') || li).textContent, stream: li.dataset.stream,
        warn: li.hasAttribute('data-warn'), level: (li.querySelector('.level') || {{}}).textContent || null,
        red: [...li.querySelectorAll('span.ansi-fg-1')].map(s => s.textContent)}}))""")


def test_output_panel_shows_the_jobs_lines_live_marked_escaped_and_follows_the_tail(page, http, web,
                                                                                  workers, redis):
    job_id = create_job(http, "printer", lines=100)
    page.goto(f"{web.url}/jobs/{job_id}")
    page.wait_for_function("() => window.jobcastPage().output.length >= 104")
    state = page.evaluate("window.jobcastPage()")
    assert not state["ended"] and state["outputFollowing"]      # live: the job waits for us
    assert rows(page)[-1]["text"] == "line 99"                  # following the tail
    assert page.locator("#output-count").text_content() == "(104 lines)"
    href = page.locator("a.output-download").get_attribute("href")
    assert href.endswith(f"/api/jobs/{job_id}/output")

    page.evaluate("document.getElementById('output-view').scrollTop = 0")
    page.wait_for_function(f"() => {ROWS}.length && {ROWS}[0].textContent.startsWith('<img')")
    first = rows(page)[:4]
    assert first[0]["text"] == '<img src=x onerror="window.pwned=1">'   # text, not an element
    assert page.evaluate("document.querySelectorAll('#output-lines img').length") == 0
    assert page.evaluate("window.pwned === undefined")
    assert first[1]["text"] == "red plain done" and first[1]["red"] == ["red"]  # no escape code left
    assert first[2]["stream"] == "stderr" and first[2]["text"] == "to stderr"
    # Said, not only shown in red (a screen reader reads the row's text).
    assert page.evaluate(f"{ROWS}[2].textContent") == "stderr: to stderr"
    assert first[3]["warn"] and first[3]["level"] == "WARNING user" and first[3]["text"] == "careful"
    page.wait_for_function("() => !window.jobcastPage().outputFollowing")
    assert page.locator("#output-jump").is_visible()

    redis.rpush(f"test:go:{job_id}", 1)
    page.wait_for_function("() => window.jobcastPage().ended")
    page.wait_for_function("() => window.jobcastPage().output.slice(-1)[0] === 'after go'")
    # Scrolled up, the panel stays where the user put it...
    assert page.evaluate("document.getElementById('output-view').scrollTop") == 0
    # ...until asked to follow again.
    page.locator("#output-jump").click()
    page.wait_for_function(f"() => {ROWS}.slice(-1)[0].textContent === 'after go'")
    assert page.evaluate("window.jobcastPage().outputFollowing")


def test_a_progress_bar_drawn_over_itself_is_one_row_showing_its_last_frame_and_downloads_as_drawn(
        page, http, web, workers):
    """A review's finding: tqdm's frames each became a row marked "[continues]"."""
    job_id = create_job(http, "progress_bar", frames=3)
    page.goto(f"{web.url}/jobs/{job_id}")
    page.wait_for_function("() => window.jobcastPage().ended")
    page.wait_for_function("() => window.jobcastPage().output.slice(-1)[0] === 'after'")
    shown = rows(page)
    assert [(r["stream"], r["text"]) for r in shown] == [("stderr", "progress 100%"),
                                                        ("stdout", "after")]
    assert page.evaluate(f"{ROWS}[0].querySelector('.note')") is None   # not "[continues]"
    assert page.locator("#output-count").text_content() == "(2 lines)"
    download = http.get(f"/api/jobs/{job_id}/output").text
    assert download == "progress 0%\rprogress 50%\rprogress 100%\nafter\n"
