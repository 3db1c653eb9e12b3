"""The pure parts of output capture: lines from bytes, cut and partial lines, the rate cap."""

from __future__ import annotations

from jobcast.worker.lines import LINE_MAX, LineSplitter, RateWindow, clip, utf8_prefix


def texts(lines) -> list[str]:
    return [line.text for line in lines]


def test_bytes_become_lines_split_on_newline_with_crlf_and_progress_redraws_resolved():
    s = LineSplitter("stdout")
    assert texts(s.feed(b"one\ntwo\r\nthr", 0.0)) == ["one", "two"]
    assert texts(s.feed(b"ee\n 10%\r 50%\r100%\n", 0.1)) == ["three", "100%"]
    assert s.deadline() is None


def test_a_line_without_its_newline_is_sent_partial_after_its_wait_and_what_follows_is_new():
    s = LineSplitter("stdout", partial_after=0.2)
    assert s.feed(b"tick", 10.0) == []
    assert s.deadline() == 10.2
    assert s.expire(10.1) is None
    line = s.expire(10.2)
    assert (line.text, line.partial) == ("tick", True)
    assert texts(s.feed(b" tock\n", 10.3)) == [" tock"] and s.flush(10.4) is None


def test_a_progress_bars_next_frame_after_a_carriage_return_is_marked_as_redrawing_its_line():
    """A review's finding: tqdm's frames (``"\\rprogress 35%"``, sent partial as they wait for a
    newline) lost their ``\\r``, so viewers joined them into ``progress 15%progress 35%…``."""
    s = LineSplitter("stderr", partial_after=0.2)
    sent = []
    for k, now in enumerate((0.0, 0.3, 0.6)):
        s.feed(f"\rprogress {k * 50}%".encode(), now)
        sent.append(s.expire(now + 0.2))
    sent += s.feed(b"\n", 0.9)                     # tqdm's close: the last frame stays
    assert [(x.text, x.partial, x.redraw) for x in sent] == [
        ("progress 0%", True, False), ("progress 50%", True, True),
        ("progress 100%", True, True), ("", False, False)]
    assert sent[1].body(1)["redraw"] is True and "redraw" not in sent[0].body(1)


def test_a_frame_ended_by_a_carriage_return_makes_the_next_piece_redraw_but_not_a_crlfs_newline():
    s = LineSplitter("stdout", partial_after=0.2)
    s.feed(b"50%\r", 0.0)
    first = s.expire(0.2)
    (after,) = s.feed(b"100%\n", 0.3)
    assert (first.text, first.redraw, after.text, after.redraw) == ("50%", False, "100%", True)
    s.feed(b"done\r", 1.0)
    s.expire(1.2)
    (end,) = s.feed(b"\n", 1.3)                     # "done\r\n" split by the wait: no redraw
    assert (end.text, end.redraw) == ("", False)
    s.feed(b"a\rb", 2.0)                            # a line's first piece redraws nothing
    first = s.expire(2.2)
    assert (first.text, first.redraw) == ("b", False)


def test_what_is_pending_at_the_end_is_flushed_as_partial():
    s = LineSplitter("stderr")
    s.feed(b"last words", 1.0)
    line = s.flush(1.05)
    assert (line.stream, line.text, line.partial) == ("stderr", "last words", True)


def test_a_long_line_keeps_its_first_bytes_and_says_how_long_it_was():
    s = LineSplitter("stdout")
    for _ in range(100):
        assert s.feed(b"x" * 10_000, 0.0) == []
    assert len(s.head) <= LINE_MAX + 1   # memory stays bounded however long the line
    (line,) = s.feed(b"\n", 0.0)
    assert len(line.text.encode()) == LINE_MAX and line.cut == 1_000_000


def test_a_cut_never_splits_a_utf8_character():
    text, cut = clip("é".encode() * 5000)          # 2 bytes each: the cut falls between two
    assert cut == 10_000 and text == "é" * (LINE_MAX // 2)
    data = b"a" + "€".encode() * 3000               # 3 bytes each: the cut falls inside one
    kept = utf8_prefix(data, LINE_MAX)
    assert len(kept) <= LINE_MAX and kept.decode() == "a" + "€" * ((len(kept) - 1) // 3)


def test_skipping_counts_lines_without_keeping_them_and_keeps_the_unfinished_end():
    s = LineSplitter("stdout")
    s.feed(b"par", 0.0)
    assert s.skip(b"tial\n1\n2\n3", 0.1) == 3
    assert texts(s.feed(b"4\n", 0.2)) == ["34"]


def test_body_has_the_entry_fields_only_when_they_apply():
    s = LineSplitter("stdout")
    (line,) = s.feed(b"hello\n", 5.0)
    assert line.body(2) == {"stream": "stdout", "text": "hello", "attempt": 2}


def test_the_rate_window_admits_its_lines_then_counts_the_rest_and_announces_them_once(clock):
    window = RateWindow(lines=3, max_bytes=1000)
    admitted = [window.admit(1, clock()) for _ in range(5)]
    assert admitted == [True, True, True, False, False] and window.full(clock())
    window.drop(10)
    assert window.notice(clock()) == 0          # not before the window has passed
    clock.advance(1.0)
    assert not window.full(clock())
    assert window.notice(clock()) == 12 and window.notice(clock()) == 0


def test_the_rate_window_also_caps_bytes_and_gives_every_count_at_the_end(clock):
    window = RateWindow(lines=100, max_bytes=10)
    assert window.admit(6, clock()) and not window.admit(6, clock()) and window.admit(4, clock())
    assert window.notice(clock(), final=True) == 1


def test_a_line_costs_its_utf_8_bytes_against_the_cap_whatever_it_holds():
    """A code review's finding: the 256 KiB a second counted characters (a CJK line cost a
    third of its bytes)."""
    from jobcast.worker.lines import OutputLine

    assert OutputLine("stdout", "abc", 0.0).size == 3
    assert OutputLine("stdout", "漢字é", 0.0).size == 8
    assert OutputLine("stdout", "x\udcff", 0.0).size == 4  # a lone surrogate (a file name)


def test_a_character_split_between_two_writes_goes_out_whole_in_the_next_partial_line():
    """A job author's finding: a partial line sent while a character's bytes were split
    between two writes decoded each half as U+FFFD, for good (a forking worker's output)."""
    split = LineSplitter("stdout", partial_after=0.2)
    char = "中😀".encode()
    split.feed(b"A" + char[:2], 0.0)
    first = split.expire(0.3)
    assert first.text == "A" and first.partial
    assert split.expire(0.6) is None  # only a character's first bytes: they wait,
    assert split.deadline() == 0.6 + 0.2  # and are not due again at once
    split.feed(char[2:5], 0.65)
    second = split.expire(0.85)
    assert second.text == "中"
    (last,) = split.feed(char[5:] + b"Z\n", 0.9)
    assert last.text == "😀Z" and not last.partial
    split.feed(b"B" + char[:1], 1.0)
    assert split.flush(1.1, whole=True).text == "B"  # before a record printed after it
    assert split.flush(1.2).text == "\ufffd"  # the job ended: what is left, as it is
