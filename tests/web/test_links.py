"""Signed view links and the read-mode setting: pure logic, no server."""

from __future__ import annotations

import pytest

from jobcast.core.settings import Settings
from jobcast.core.urls import with_sig
from jobcast.web.links import LinkError, sign, verify, view_sig

JOB = "a" * 32
CFG = Settings(token="t0ken")


def tampered(token: str) -> str:
    """``token`` with one character of its payload changed."""
    k = 5
    return token[:k] + ("x" if token[k] != "x" else "y") + token[k + 1:]


def test_a_link_verifies_for_its_job_until_it_expires():
    assert verify(CFG, JOB, sign(CFG, JOB)) == {"j": JOB}
    timed = sign(CFG, JOB, ttl=60, now=1000.0)
    assert verify(CFG, JOB, timed, now=1059.0)["e"] == 1060
    with pytest.raises(LinkError) as exc:
        verify(CFG, JOB, timed, now=1060.0)
    assert exc.value.reason == "expired"


@pytest.mark.parametrize("token, reason", [
    (sign(CFG, "b" * 32), "other_job"),
    (sign(Settings(token="another"), JOB), "invalid"),
    (sign(Settings(token="t0ken", secret="s"), JOB), "invalid"),
    (tampered(sign(CFG, JOB)), "invalid"),
    ("", "invalid"),
    ("not.a.link", "invalid"),
])
def test_other_job_other_key_and_tampered_links_are_refused_with_a_reason(token, reason):
    with pytest.raises(LinkError) as exc:
        verify(CFG, JOB, token)
    assert exc.value.reason == reason


def test_the_secret_signs_links_when_set_so_the_token_can_rotate():
    with_secret = Settings(token="old", secret="s3")
    link = sign(with_secret, JOB)
    assert verify(Settings(token="new", secret="s3"), JOB, link)["j"] == JOB


def test_read_mode_defaults_on_the_token_and_rejects_other_values():
    assert Settings().read_mode == "public"
    assert Settings(token="t").read_mode == "private"
    assert Settings(token="t", read="public").read_mode == "public"
    assert Settings(read="PRIVATE", secret="s").read_mode == "private"
    with pytest.raises(ValueError, match="JOBCAST_READ"):
        Settings(read="open").read_mode


def test_urls_are_signed_only_in_private_mode():
    assert view_sig(Settings(), JOB) is None
    sig = view_sig(Settings(token="t"), JOB)
    assert with_sig("/jobs/x", sig) == f"/jobs/x?sig={sig}"
    assert with_sig("/jobs/x?start=2", sig).startswith("/jobs/x?start=2&sig=")
    assert with_sig("/jobs/x", None) == "/jobs/x"
