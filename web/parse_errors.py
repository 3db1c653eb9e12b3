"""What the web process answers a request gunicorn could not parse (a malformed request line,
a ``Content-Length`` that is no number, a header over the limits): JSON, in the body every
other error has (:class:`~jobcast.web.models.Error`), not gunicorn's HTML page.

gunicorn answers these before any app sees the request (``Worker.handle_error``). It still
chooses the status and logs the request; :class:`JsonErrorSocket` only rewrites the page it
sends into JSON.
"""

from __future__ import annotations

import json
import socket

from gunicorn.http.errors import InvalidHeader, InvalidHeaderName
from werkzeug.http import HTTP_STATUS_CODES

from jobcast.web.models import Error, error_code
from jobcast.web.security import OTHER_CSP, REFERRER_POLICY


class JsonErrorSocket:
    """A client socket for gunicorn's ``handle_error``: the error page it writes goes out as
    JSON, with gunicorn's status line."""

    __slots__ = ("_sock", "_exc")

    def __init__(self, sock: socket.socket, exc: BaseException):
        """Wrap ``sock``, for the answer to ``exc``."""
        self._sock = sock
        self._exc = exc

    def __getattr__(self, name: str):
        """Everything else is the real socket's."""
        return getattr(self._sock, name)

    def sendall(self, data: bytes, *args) -> None:
        """Send ``data``, gunicorn's whole error response, with a JSON body in its place."""
        status_line = data.split(b"\r\n", 1)[0]
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):  # not an answer of handle_error's: left as it is
            return self._sock.sendall(data, *args)
        self._sock.sendall(response(status, self._exc), *args)


def body(status: int, exc: BaseException) -> dict[str, str]:
    """The JSON body answering ``exc`` with ``status``, as every error's
    (:class:`~jobcast.web.models.Error`): the request's fault is named (the header, when one is
    at fault); the server's own is not detailed."""
    name = HTTP_STATUS_CODES.get(status, "error")
    if status == 500:  # gunicorn's own failure, or a header the app tried to send
        return Error(error=error_code(name), message="internal server error").model_dump(
            exclude_unset=True)
    fields = {}
    if isinstance(exc, (InvalidHeader, InvalidHeaderName)) and isinstance(exc.hdr, str):
        fields["field"] = exc.hdr.title()  # gunicorn gives CONTENT-LENGTH
    return Error(error=error_code(name), message=str(exc) or name, **fields).model_dump(
        exclude_unset=True)


def response(status: int, exc: BaseException) -> bytes:
    """The whole HTTP response: ``status``, the JSON body, and the connection closed (after a
    malformed request, where the next one would begin is unknown)."""
    data = json.dumps(body(status, exc)).encode()
    reason = HTTP_STATUS_CODES.get(status, "Error")
    # The headers every other response has (security_headers): no app sees this request.
    return (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"X-Content-Type-Options: nosniff\r\nContent-Security-Policy: {OTHER_CSP}\r\n"
            f"Referrer-Policy: {REFERRER_POLICY}\r\n\r\n").encode("latin-1") + data
