"""The logging side of a job's output capture (:mod:`jobcast.worker.capture`): the handler
that takes the job's records into its capture, and the filters it puts on the handlers already
there meanwhile."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from jobcast.worker.capture import Capture

EXCLUDED_LOGGERS = ("rq", "redis", "jobcast")
"""Loggers whose records are the worker's own, never the job's."""


def _owns(record: logging.LogRecord) -> bool:
    """True for the records of RQ's, redis' and Jobcast's own loggers."""
    name = record.name
    return any(name == n or name.startswith(n + ".") for n in EXCLUDED_LOGGERS)


def all_handlers() -> Iterator[logging.Handler]:
    """Every handler of the root logger and of every logger created so far."""
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        yield from list(logger.handlers)


class CaptureHandler(logging.Handler):
    """Takes the job's logging records, on the root logger, from the configured level up.

    The root's level is lowered to it for the job if needed; the handlers already there keep
    seeing only what they saw before. Records of RQ, redis and Jobcast, of the capture's own
    threads, and any logged while a record is being captured are left alone.
    """

    def __init__(self, capture: Capture):
        """Capture into ``capture``."""
        super().__init__(capture.level)
        self.capture = capture
        self.busy = threading.local()
        self.old_level: int | None = None
        self.keep = KeepLevel(logging.getLogger().level)
        self.skip = SkipCaptured(self)

    def wants(self, record: logging.LogRecord) -> bool:
        """True for the job's own records from the level up."""
        return (record.levelno >= self.level and not _owns(record)
                and record.thread not in self.capture.idents
                and not getattr(self.busy, "on", False))

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record as a ``logging`` line (in a forked child of the job: write it to
        stderr, which the pipe still captures)."""
        if not self.wants(record):
            return
        self.busy.on = True
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + self.formatter_for().formatException(record.exc_info)
            if os.getpid() != self.capture.pid:
                os.write(2, f"{record.levelname} {record.name}: {text}\n".encode("utf-8", "replace"))
            else:
                self.capture.record(record, text)
        except Exception:
            self.handleError(record)
        finally:
            self.busy.on = False

    def formatter_for(self) -> logging.Formatter:
        """The formatter of tracebacks."""
        return self.formatter or logging.Formatter()

    def install(self, consoles: set[int]) -> None:
        """Add the handler to the root logger; lower the root's level if it is above ours.

        With the echo on, the handlers writing to a stream in ``consoles`` (ids) leave the
        records we take to the echo, so each is printed once.
        """
        root = logging.getLogger()
        if root.level > self.level:
            self.old_level = root.level
            for handler in all_handlers():
                handler.addFilter(self.keep)
            root.setLevel(self.level)
        if self.capture.echo:
            for handler in all_handlers():
                if isinstance(handler, logging.StreamHandler) and id(handler.stream) in consoles:
                    handler.addFilter(self.skip)
        root.addHandler(self)

    def remove(self) -> None:
        """Take the handler off, and put the root's level and the handlers back."""
        root = logging.getLogger()
        root.removeHandler(self)
        if self.old_level is not None:
            root.setLevel(self.old_level)
        for handler in all_handlers():
            handler.removeFilter(self.keep)
            handler.removeFilter(self.skip)


class KeepLevel(logging.Filter):
    """On the handlers that were there: drop what they would not have seen before the root's
    level was lowered for the capture."""

    def __init__(self, level: int):
        """The root's level before."""
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass records at the old level, or from loggers with a level of their own."""
        if record.levelno >= self.level:
            return True
        logger = logging.getLogger(record.name)
        while logger.parent is not None:  # up to the root
            if logger.level:
                return True
            logger = logger.parent
        return False


class SkipCaptured(logging.Filter):
    """On the console handlers: a record the capture took is printed once, by its echo."""

    def __init__(self, handler: CaptureHandler):
        """Skip what ``handler`` takes."""
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the records the capture takes."""
        return not self.handler.wants(record)
