"""A job's value as its log entry shows it: its text (``v``) and its JSON (``j``).

Made once, where the value is logged (:meth:`jobcast.core.joblog.JobLog.value`): every stream
and page shows the text made here, and the text is always valid Unicode.
"""

from __future__ import annotations

import codecs
import decimal
import json
import math
import re
import sys
from typing import Any, NamedTuple

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _escape_surrogate(match: re.Match) -> str:
    """A lone surrogate as text: ``\\xNN`` for the byte Python's ``surrogateescape`` kept in it
    (a non-UTF-8 file name from ``os.fsdecode``), ``\\uNNNN`` for any other."""
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _escape_surrogates(error: UnicodeError) -> tuple[str, int]:
    """The error handler :data:`ESCAPE_SURROGATES` names: lone surrogates as
    :func:`valid_text` writes them."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    bad = error.object[error.start:error.end]
    return _SURROGATE.sub(_escape_surrogate, bad), error.end


ESCAPE_SURROGATES = "jobcast.escape_surrogates"
"""An ``errors=`` for ``str.encode`` and text streams: a lone surrogate (a file name
``os.fsdecode`` could not decode) written as the values' text writes it, ``\\xNN``."""
codecs.register_error(ESCAPE_SURROGATES, _escape_surrogates)


def value_text(value: Any) -> str:
    """How any Python value becomes the text a stream shows: ``"{}".format(value)``, with every
    lone surrogate written as an escape, so the text is always valid Unicode (a frame can
    always encode it as UTF-8). NUL and other control characters stay: JSON escapes them, the
    text stream escapes CR and LF (one line per value), and HTML escapes markup.

    An int longer than Python's limit on int-to-text conversion (4,300 digits, a guard against
    untrusted input, which a job's own result is not) is written all the same; the value limit
    (JOBCAST_VALUE_MAX) then decides whether the log takes it."""
    try:
        return valid_text("{}".format(value))
    except ValueError:
        if not isinstance(value, int) or sys.get_int_max_str_digits() == 0:
            raise
        return str(decimal.Decimal(value))  # exact, and not bound by that limit


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate written as an escape (as :func:`value_text` does),
    so that it always encodes as UTF-8: an exception's message or a worker's name may carry a
    file name that ``os.fsdecode`` could not decode."""
    if text.isascii():  # (a flag of the string: no scan) no surrogate, the usual case
        return text
    return _SURROGATE.sub(_escape_surrogate, text) if _SURROGATE.search(text) else text


# Made once: ``json.dumps`` with any option builds a new encoder on every call, and these run
# for every value a job writes. Text that is not ASCII stays as it is (UTF-8 in Redis and on
# the wire): escaped, a CJK character took 6 bytes rather than 3, and counted so against the
# value limit.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_STRICT = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)

# All but three: what Python's ``str.splitlines`` (and so httpx's ``iter_lines``, a client's
# SSE reader) takes for line breaks besides CR and LF. Raw in an SSE ``data:`` line, they would
# cut it in two there, so they stay escaped.
_BREAKS = re.compile("[\u0085\u2028\u2029]")


def _escape_break(match: re.Match) -> str:
    """A line break other than CR or LF, as a JSON escape."""
    return f"\\u{ord(match.group()):04x}"


def json_text(value: Any) -> str:
    """``value`` as compact JSON (what :func:`_as_json_data` makes of it when it holds a lone
    surrogate), text that is not ASCII as it is but for the line breaks :data:`_BREAKS` names:
    what every field of a log entry is written as."""
    return _unbroken(_json(_COMPACT, value))


def _json(encoder: json.JSONEncoder, value: Any) -> str:
    """``value`` encoded by ``encoder``, made valid Unicode (a lone surrogate inside it, kept
    raw now that text is not escaped, would not encode as UTF-8)."""
    as_json = encoder.encode(value)
    if not as_json.isascii() and _SURROGATE.search(as_json):
        as_json = encoder.encode(_as_json_data(value))
    return as_json


def _unbroken(as_json: str) -> str:
    """``as_json`` with the line breaks :data:`_BREAKS` names escaped."""
    if as_json.isascii() or not _BREAKS.search(as_json):
        return as_json
    return _BREAKS.sub(_escape_break, as_json)


def encode_value(value: Any) -> tuple[str, str]:
    """Return (text, json) for a task value: text as :func:`value_text` makes it, JSON with
    every non-finite float as ``null`` (JSON has none; the text still shows it) and every
    lone surrogate escaped as the text does. A value JSON cannot hold (an object of the job's
    own) is its text as a JSON string."""
    text = value_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return text, "null"
    try:
        as_json = _json(_STRICT, value)
    except TypeError:
        return text, json_text(text)
    except ValueError:  # a NaN or an infinity inside a list or a dict
        try:
            as_json = _STRICT.encode(_as_json_data(value))
        except (TypeError, ValueError):
            as_json = _COMPACT.encode(text)
    return text, _unbroken(as_json)


def _as_json_data(value: Any) -> Any:
    """``value`` with each non-finite float inside it ``None`` and each string (key or item)
    made valid Unicode: what :func:`encode_value` encodes when the plain encoding cannot."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {valid_text(k) if isinstance(k, str) else k: _as_json_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json_data(v) for v in value]
    return value


class PreparedValue(NamedTuple):
    """A value as its entry will show it, made once
    (:meth:`jobcast.core.joblog.JobLog.prepare`): a writer that must send it later holds this,
    not the object, which the job may change meanwhile."""

    text: str
    """What the entry shows: the value's text, or the notice that it was refused."""
    json: str
    """The value as JSON (``null`` when refused)."""
    refused: int | None = None
    """The value's size in bytes when it was over ``value_max``."""
