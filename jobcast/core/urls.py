"""The URLs of a job: the paths the web serves it at, and how the CLI and the API print them.

The web's routes are declared from :data:`JOB_PATHS`, so the URLs the CLI prints (which has no
Flask app to ask) and the routes the web serves cannot drift apart.
"""

from __future__ import annotations

from urllib.parse import quote

PARAM = "sig"
"""The query parameter that carries a view link's signature."""

JOB_PATHS = {
    "page": "/jobs/<job_id>",
    "stream": "/jobs/<job_id>/stream",
    "events": "/jobs/<job_id>/events",
    "frame": "/jobs/<job_id>/frame",
    "framed": "/jobs/<job_id>/framed",
    "status": "/api/jobs/<job_id>",
}
"""Each view of a job, as a Flask URL rule."""


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL and gunicorn's ``--bind`` write it: an IPv6 address in brackets
    (``[::1]:8000``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def with_sig(url: str, token: str | None) -> str:
    """``url`` with ``?sig=token`` appended (unchanged when there is no token)."""
    if not token:
        return url
    return f"{url}{'&' if '?' in url else '?'}{PARAM}={quote(token, safe='')}"


def job_urls(job_id: str, base: str = "", *, sig: str | None = None) -> dict[str, str]:
    """The URLs at which a job can be watched, relative to ``base`` (signed with ``sig``)."""
    base = base.rstrip("/")
    return {name: with_sig(base + path.replace("<job_id>", job_id), sig)
            for name, path in JOB_PATHS.items()}
