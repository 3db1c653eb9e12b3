"""The `jobcast` command's arguments and settings, in-process (no service is started)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobcast.cli import commands as cli
from jobcast.core.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    """Settings read from this test's environment (no JOBCAST_* from the shell running it)."""
    for field in Settings.model_fields.values():
        monkeypatch.delenv(field.validation_alias, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def served(monkeypatch) -> list:
    """The (bind, workers) `jobcast web` would serve with, instead of starting gunicorn (and
    with any address taken for this machine's: its check is tests/web/test_serve.py's)."""
    calls = []
    monkeypatch.setattr(cli, "serve", lambda bind, workers: calls.append((bind, workers)))
    monkeypatch.setattr(cli, "cannot_listen", lambda host, port: None)
    return calls


def test_jobcast_web_listens_on_loopback_unless_told_otherwise(served, monkeypatch):
    """Finding 6 of issue 23: `jobcast web` bound 0.0.0.0 by default."""
    assert cli.main(["web"]) == 0
    assert served[-1][0] == "127.0.0.1:8000"
    assert cli.main(["web", "--bind", "0.0.0.0"]) == 0 and served[-1][0] == "0.0.0.0:8000"
    monkeypatch.setenv("JOBCAST_BIND", "192.0.2.1")
    get_settings.cache_clear()
    assert cli.main(["web"]) == 0 and served[-1][0] == "192.0.2.1:8000"


def test_jobcast_web_in_private_mode_without_a_token_or_secret_is_refused_in_one_line(
        served, monkeypatch, capsys):
    """A review's finding: the check ran in each gunicorn worker, which failed with a
    traceback; gunicorn exited 3, `jobcast up` restarted it five times, and compose forever.
    It is a bad setting: one line, exit 2, before gunicorn. A worker needs no token."""
    monkeypatch.setenv("JOBCAST_READ", "private")
    get_settings.cache_clear()
    assert cli.main(["web"]) == 2 and served == []
    assert one_line(capsys.readouterr().err) == (
        "jobcast: JOBCAST_READ=private needs JOBCAST_TOKEN (and optionally JOBCAST_SECRET)")
    monkeypatch.setenv("JOBCAST_SECRET", "a-secret-of-at-least-32-characters-long")
    get_settings.cache_clear()
    assert cli.main(["web"]) == 0 and len(served) == 1


def one_line(text: str) -> str:
    """``text``, which must be exactly one line."""
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("var, value, says", [
    ("JOBCAST_LOG_MAXLEN", "0", "JOBCAST_LOG_MAXLEN='0' is invalid: Input should be greater than"),
    ("PORT", "70000", "PORT='70000' is invalid: Input should be less than or equal to 65535"),
    ("JOBCAST_READ", "open", "JOBCAST_READ='open' is invalid: expected public or private"),
    ("JOBCAST_PARAM_CAPS", "n", "JOBCAST_PARAM_CAPS='n' is invalid: item 'n' is not name=limit"),
    ("JOBCAST_TASKS", "no_such_module", "JOBCAST_TASKS='no_such_module' is invalid: No module"),
])
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(monkeypatch, capsys, var, value, says):
    """Finding 17 of issue 23: a bad JOBCAST_* value was a traceback."""
    from jobcast.core import registry

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setenv(var, value)
    assert cli.main(["jobs"]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"jobcast: {says}")


@pytest.mark.parametrize("var, value, secret", [
    ("REDIS_URL", "redis+sentinel://:S3CRETPW@h1:26379", "S3CRETPW"),
    ("JOBCAST_STREAM_URL", "redis+sentinel://h1:26379?sentinel_password=SENTPW", "SENTPW"),
])
def test_a_bad_redis_url_is_named_without_its_passwords(monkeypatch, capsys, var, value, secret):
    """A review's finding: a malformed URL was echoed, password and all, by the command and in
    the settings' own error."""
    monkeypatch.setenv(var, value)
    assert cli.main(["jobs"]) == 2
    said = one_line(capsys.readouterr().err)
    assert said.startswith(f"jobcast: {var}='redis+sentinel://") and "***" in said
    assert secret not in said
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert var in str(excinfo.value) and secret not in str(excinfo.value)


@pytest.mark.parametrize("argv, says", [
    (["up", "--port", "70000"], "jobcast up: argument --port: must be between 1 and 65535"),
    (["web", "--port", "70000"], "jobcast web: argument --port: must be between 1 and 65535"),
    (["web", "--port", "0"], "jobcast web: argument --port: must be between 1 and 65535"),
    (["jobs", "--limit", "0"], "jobcast jobs: argument --limit: must be between 1 and 500"),
    (["jobs", "--limit", "-1"], "jobcast jobs: argument --limit: must be between 1 and 500"),
])
def test_a_bad_argument_is_one_line_naming_it_and_exit_2(capsys, served, argv, says):
    """Finding 17 of issue 23: `jobcast up --port 70000` and `jobcast web --port 70000` were
    tracebacks, and `jobcast jobs --limit 0` listed the whole job index."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and served == []
    assert one_line(capsys.readouterr().err).startswith(says)


@pytest.mark.parametrize("argv", [["jobs"], ["enqueue", "sqrt", "--n", "3"], ["cancel", "a" * 32]])
def test_redis_out_of_reach_is_one_line_without_its_password_and_exit_3(monkeypatch, capsys, argv):
    """Finding 17 of issue 23: `jobcast jobs` with Redis down printed a 52-line traceback;
    finding 16: `jobcast enqueue` printed the password in REDIS_URL."""
    from jobcast.launcher.redisserver import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0")
    assert cli.main(argv) == 3
    line = one_line(capsys.readouterr().err)
    assert line.startswith("jobcast: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "s3cret-pass" not in line


def test_enqueue_with_tail_but_no_follow_is_refused_before_the_job_is_queued(monkeypatch,
                                                                             capsys):
    """A CLI user's review: `jobcast enqueue sqrt --tail 5` ignored --tail without a word.
    Refused before anything reaches Redis (none is reachable here: it would be exit 3)."""
    from jobcast.launcher.redisserver import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert cli.main(["enqueue", "sqrt", "--n", "3", "--tail", "5"]) == 2
    assert one_line(capsys.readouterr().err) == (
        "jobcast: --tail is an option of --follow (the job was not queued)")


def test_following_a_job_named_twice_says_each_is_named_once():
    """A CLI user's review: `jobcast follow X X` answered "name from 1 to 100 different jobs"."""
    import httpx

    from jobcast.cli.follow_many import MultiEventStream
    from jobcast.cli.sse import BadInput, JitterBackoff

    with pytest.raises(BadInput) as excinfo:
        MultiEventStream(httpx.Client(), "http://jobcast.test", ["a" * 32, "b" * 32, "a" * 32],
                         JitterBackoff(1))
    assert str(excinfo.value) == f"job {'a' * 32} is named more than once: name each job once"


def test_jobcast_web_bind_takes_gunicorns_host_colon_port_form(served):
    """A CLI user's review: `jobcast web --bind 127.0.0.1:7425` (gunicorn's form) failed with
    "cannot listen on [127.0.0.1:7425]:8000: Name or service not known"."""
    assert cli.main(["web", "--bind", "127.0.0.1:7425"]) == 0
    assert served[-1][0] == "127.0.0.1:7425"
    assert cli.main(["web", "--bind", "[::1]:7426"]) == 0 and served[-1][0] == "[::1]:7426"
    assert cli.main(["web", "--bind", "::1", "--port", "7427"]) == 0
    assert served[-1][0] == "[::1]:7427"


@pytest.mark.parametrize("argv, says", [
    (["web", "--bind", "127.0.0.1:7425", "--port", "7426"],
     "jobcast web: argument --bind: names port 7425, and --port 7426: give the port one way"),
    (["web", "--bind", "127.0.0.1:99999"],
     "jobcast web: argument --bind: expected HOST:PORT with a port of 1 to 65535, got "
     "'127.0.0.1:99999'"),
    (["web", "--bind", "999.1.1.1"], "jobcast web: argument --bind: cannot resolve '999.1.1.1'"),
])
def test_a_bind_address_that_cannot_be_is_a_bad_argument_exit_2(capsys, served, argv, says):
    """A CLI user's review: a port given both in --bind and --port went unnoticed, and
    `--bind 999.1.1.1` was exit 1, where the README says a bad argument is exit 2."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and served == []
    assert one_line(capsys.readouterr().err).startswith(says)


def test_a_port_in_jobcast_bind_is_a_bad_setting_exit_2(capsys, served, monkeypatch):
    """PORT says the port: JOBCAST_BIND=host:port would leave it unclear which one wins."""
    monkeypatch.setenv("JOBCAST_BIND", "0.0.0.0:7425")
    assert cli.main(["web"]) == 2 and served == []
    assert one_line(capsys.readouterr().err) == (
        "jobcast: JOBCAST_BIND='0.0.0.0:7425' is invalid: the port is PORT's (or --port's) to "
        "say, not JOBCAST_BIND's")


def test_a_stray_argument_points_to_its_own_commands_help(capsys):
    """A CLI user's review: `jobcast tasks extra` pointed to `jobcast --help`, which does not
    list the arguments of `jobcast tasks`."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["tasks", "extra"])
    assert exc.value.code == 2
    assert one_line(capsys.readouterr().err) == (
        "jobcast tasks: unrecognized arguments: extra (see jobcast tasks --help)")


def test_follow_help_lists_every_exit_code_the_readme_does(capsys):
    """A CLI user's review: `jobcast follow --help` did not list 130 (Ctrl-C) and 141 (its
    output's reader left), which the README does."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["follow", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "130 when interrupted (Ctrl-C)" in text
    assert "141 when its output's reader left (| head)" in text
