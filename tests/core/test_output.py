"""A job's output as the download shows it: lines as printed, partial lines joined, marks."""

from __future__ import annotations

from jobcast.core.output import OutputText


def entry(text: str, attempt: int = 1, stream: str = "stdout", **extra) -> dict:
    return {"seq": 0, "kind": "log", "stream": stream, "text": text, "attempt": attempt, **extra}


ENTRIES = [
    entry("starting"),
    entry("tick", partial=True), entry(" tock"),
    entry("disk low", stream="logging", level="WARNING", logger="user"),
    entry("x" * 3, cut=1_000_000),
    entry("[jobcast] 9 lines dropped (over 200 lines or 256 KiB a second)", stream="stderr", dropped=9),
    entry("half", partial=True),
    entry("again", attempt=2),
]


def test_the_whole_output_reads_as_printed_with_attempts_marked():
    assert OutputText().text(ENTRIES) == (
        "starting\ntick tock\nWARNING user: disk low\nxxx [cut: 1000000 bytes]\n"
        "[jobcast] 9 lines dropped (over 200 lines or 256 KiB a second)\nhalf\n"
        "── attempt 2 ──\nagain\n")


def test_one_attempt_has_only_its_lines_and_pages_continue_each_other():
    out = OutputText(attempt=2)
    assert out.text(ENTRIES[:4]) == "" and out.text(ENTRIES[4:]) == "again\n"
    whole = OutputText()
    assert whole.text(ENTRIES[:2]) + whole.text(ENTRIES[2:3]) == "starting\ntick tock\n"


def test_a_partial_line_is_ended_by_another_streams_line_not_glued_onto_it():
    """A review's finding: ``print("OUT", end=""); print("ERR", file=sys.stderr)`` downloaded
    as ``OUTERR``, and a logging record in its place as ``OUTWARNING app: …``."""
    out = OutputText().text([
        entry("OUT", partial=True), entry("ERR", stream="stderr"), entry("-rest"),
        entry("two", partial=True), entry("warned", stream="logging", level="WARNING",
                                          logger="app"),
        entry("same", partial=True), entry(" line"),
        entry("err ", stream="stderr", partial=True), entry("half", partial=True),
        entry("done", stream="stderr")])
    assert out.splitlines() == ["OUT", "ERR", "-rest", "two", "WARNING app: warned",
                                "same line", "err ", "half", "done"]


def test_a_progress_bars_frames_download_as_the_job_wrote_them_with_their_carriage_returns():
    """A review's finding: the frames were glued, ``progress 15%progress 35%``; a terminal
    showing the download shows the last frame, as it showed the job."""
    out = OutputText().text([
        entry("progress 0%", stream="stderr", partial=True),
        entry("progress 50%", stream="stderr", partial=True, redraw=True),
        entry("progress 100%", stream="stderr", partial=True, redraw=True),
        entry("", stream="stderr"), entry("after")])
    assert out == "progress 0%\rprogress 50%\rprogress 100%\nafter\n"
