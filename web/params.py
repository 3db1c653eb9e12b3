"""Request parameters, each read once and checked before anything is built from it: a bad
one is a 400 naming it (:class:`~jobcast.web.errors.BadParam`), and no Redis key is made
from a job id that is not well formed.

The foundation of the views' declarations (:mod:`jobcast.web.surface`) and of the streams'
admission (:mod:`jobcast.web.admission`): it imports neither.
"""

from __future__ import annotations

from jobcast.core.epoch import EPOCH, parse_position
from jobcast.core.keys import InvalidJobId, check_job_id
from jobcast.web.errors import BadParam

MAX_SEQ = 2**53  # anything larger cannot be a real position (and JS could not hold it)


def int_param(name: str, raw: str | None, *, default: int = 0) -> int:
    """A non-negative integer parameter, or a 400 naming it."""
    if raw is None or raw == "":
        return default
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16 or int(raw) > MAX_SEQ:
        raise BadParam(name, f"{name} must be a non-negative integer up to {MAX_SEQ}")
    return int(raw)


def position_param(name: str, raw: str) -> tuple[int, str | None]:
    """``<seq>`` or ``<seq>:<epoch>`` (an SSE id), or a 400 naming the parameter."""
    position = parse_position(raw)
    if position is None or position[0] > MAX_SEQ:
        raise BadParam(name, f"{name} must be <seq> or <seq>:<epoch>, seq a non-negative "
                             f"integer up to {MAX_SEQ}")
    return position


def epoch_param(raw: str | None) -> str | None:
    """``?epoch=``: the epoch a value count was taken in, or a 400 naming it."""
    if raw is None or raw == "":
        return None
    if not EPOCH.fullmatch(raw):
        raise BadParam("epoch", "epoch must be 1 to 16 letters, digits, '-' or '_'")
    return raw


def checked_id(job_id: str) -> str:
    """``job_id`` if well formed, else a 400 naming the path parameter (``job_id``)."""
    try:
        return check_job_id(job_id)
    except InvalidJobId as exc:
        raise BadParam("job_id", str(exc)) from None
