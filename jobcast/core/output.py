"""A job's captured output as plain text: what ``GET /api/jobs/<id>/output`` downloads.

Each ``log`` entry (see :mod:`jobcast.core.joblog`) becomes what the job printed:

- stdout and stderr lines as they were, a ``partial`` one without its newline, so the
  pieces of a line sent in parts join up again (a line of another stream, or a logging
  record, that comes between them ends it: it is never glued onto another stream's line),
  and a ``redraw`` piece after a ``\\r``, as the job wrote it (a progress bar's frames: a
  terminal shows the last);
- logging records as ``LEVEL logger: text``;
- a line cut at the length cap ends with `` [cut: N bytes]`` (N: its whole length);
- a rate-cap notice as its text, ``[jobcast] N lines dropped (...)``;
- ``── attempt K ──`` where a retry's output begins, unless one attempt was asked for.
"""

from __future__ import annotations

from typing import Iterable


def line_text(entry: dict) -> str:
    """One entry's line, without the newline: the text, with its level and logger for a
    logging record and the cut mark for a cut line."""
    text = entry.get("text", "")
    if entry.get("stream") == "logging":
        text = f"{entry.get('level', '')} {entry.get('logger', '')}: {text}"
    if entry.get("cut"):
        text += f" [cut: {entry['cut']} bytes]"
    return text


class OutputText:
    """Turns a job's ``log`` entries, page after page, into the text of its output."""

    def __init__(self, attempt: int | None = None):
        """Keep only ``attempt``'s lines when given; else mark where each attempt begins."""
        self.attempt = attempt
        self.shown: int | None = None   # the attempt of the last line written
        self.open: str | None = None    # the stream of the last line written, if partial

    def text(self, entries: Iterable[dict]) -> str:
        """The text of ``entries``, continuing from the previous call."""
        out: list[str] = []
        for entry in entries:
            attempt = entry.get("attempt")
            if self.attempt is not None and attempt != self.attempt:
                continue
            stream = entry.get("stream")
            if self.attempt is None and self.shown is not None and attempt != self.shown:
                out.append(("\n" if self.open else "") + f"── attempt {attempt} ──\n")
                self.open = None
            elif self.open is not None and stream != self.open:
                out.append("\n")  # another stream's line: the partial one ends here
            elif self.open is not None and entry.get("redraw"):
                out.append("\r")  # the job drew the line over
            self.shown = attempt
            self.open = stream if entry.get("partial") and stream != "logging" else None
            out.append(line_text(entry) + ("" if self.open else "\n"))
        return "".join(out)
