"""The settings class: each variable's environment name, type, bounds, and the README's table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from jobcast.core.settings import Settings, get_settings, unknown_variables

README = Path(__file__).resolve().parents[2] / "README.md"


def env_names() -> dict[str, str]:
    """{field name: environment variable} of every setting."""
    return {name: field.validation_alias for name, field in Settings.model_fields.items()}


def shown(value: object) -> str:
    """A default as the README writes it: 15 for 15.0, 0 for False."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def readme_table() -> dict[str, tuple[str, str]]:
    """{variable: (default cell, meaning cell)} of the README's configuration table."""
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No setting comes from the environment the tests run in."""
    for name in env_names().values():
        monkeypatch.delenv(name, raising=False)


def test_every_setting_is_read_from_its_documented_environment_variable(monkeypatch):
    samples = {"redis_url": "redis://elsewhere:6380/2", "stream_url": "redis://streams:7000/0",
               "public_url": "https://jobs.example",
               "queue_name": "q", "queues": "q,r", "tasks": "a,b", "failure_reason": "type",
               "token": "t", "read": "public", "secret": "s",
               "param_caps": "n=5", "bind": "127.0.0.1", "prometheus_multiproc_dir": "/tmp/m",
               "capture": "logging", "capture_level": "DEBUG", "allowed_hosts": "a.example"}
    for name, var in env_names().items():
        value = samples.get(name, "1" if Settings.model_fields[name].annotation is bool else "7")
        monkeypatch.setenv(var, value)
    s = Settings()
    for name in env_names():
        expected = samples.get(name, True if Settings.model_fields[name].annotation is bool else 7)
        assert getattr(s, name) == expected, name


def test_values_get_their_declared_types(monkeypatch):
    monkeypatch.setenv("JOBCAST_TRUST_PROXY", "1")
    monkeypatch.setenv("JOBCAST_HEARTBEAT", "2.5")
    monkeypatch.setenv("JOBCAST_LOG_MAXLEN", "50")
    monkeypatch.setenv("JOBCAST_READ", " PRIVATE ")
    s = Settings()
    assert s.trust_proxy is True and s.heartbeat == 2.5 and s.log_maxlen == 50
    assert s.read == "private" and s.read_mode == "private"
    monkeypatch.setenv("JOBCAST_TRUST_PROXY", "0")
    assert Settings().trust_proxy is False


@pytest.mark.parametrize("var,value", [
    ("JOBCAST_LOG_MAXLEN", "0"),
    ("JOBCAST_HEARTBEAT", "0"),
    ("JOBCAST_JOB_RETRIES", "-1"),
    ("JOBCAST_STREAMS_PER_PROCESS", "0"),
    ("PORT", "70000"),
    ("WEB_CONCURRENCY", "0"),
    ("JOBCAST_JOB_TIMEOUT", "an hour"),
    ("JOBCAST_TRUST_PROXY", "maybe"),
    ("JOBCAST_PARAM_CAPS", "n"),
    ("JOBCAST_READ", "open"),
    ("JOBCAST_CAPTURE", "stdout"),
    ("JOBCAST_CAPTURE_LEVEL", "LOUD"),
    ("JOBCAST_CAPTURE_RATE", "0"),
    # A review's findings: each of these was taken, and failed later or never.
    ("JOBCAST_HEARTBEAT", "inf"),              # a heartbeat that never comes
    ("JOBCAST_WRITE_TIMEOUT", "nan"),
    ("JOBCAST_PARAM_CAPS", "n=nan"),           # a cap that caps nothing
    ("JOBCAST_PARAM_CAPS", "n=-1"),
    ("JOBCAST_LOG_TTL", str(10**16)),          # Redis refuses the EXPIRE after the entry landed
    ("JOBCAST_QUEUE", " "),
    ("JOBCAST_QUEUE", "jobs "),
])
def test_a_bad_value_is_refused_naming_its_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=var):
        Settings()


def test_an_empty_variable_means_the_default_and_keyword_arguments_win(monkeypatch):
    monkeypatch.setenv("JOBCAST_LOG_MAXLEN", "")
    monkeypatch.setenv("JOBCAST_QUEUE", "from-env")
    s = Settings(queue_name="from-code")
    assert s.log_maxlen == Settings.model_fields["log_maxlen"].default
    assert s.queue_name == "from-code"


def test_settings_are_read_once_per_process_and_cannot_change(monkeypatch):
    get_settings.cache_clear()
    try:
        first = get_settings()
        monkeypatch.setenv("JOBCAST_QUEUE", "later")
        assert get_settings() is first and first.queue_name == "jobcast"
        with pytest.raises(ValidationError):
            first.queue_name = "other"
    finally:
        get_settings.cache_clear()


def test_caps_and_task_modules_are_parsed():
    s = Settings(param_caps="n=10, sqrt.interval=2.5,", tasks=" a.b , c ,")
    assert s.caps() == {"n": 10.0, "sqrt.interval": 2.5}
    assert s.task_modules() == ["a.b", "c"]


def test_the_readme_documents_every_setting_with_its_default():
    table = readme_table()
    names = env_names()
    assert set(table) == set(names.values()), "README table and Settings differ"
    for name, var in names.items():
        field = Settings.model_fields[name]
        assert field.description, f"{name} has no description"
        default_cell, meaning = table[var]
        assert meaning, f"{var} has no meaning in the README"
        quoted = re.findall(r"`([^`]*)`", default_cell)
        if field.default in ("", None):
            continue  # an empty default is described in words ("the token")
        assert quoted and quoted[0] == shown(field.default), \
            f"README gives {var} the default {default_cell!r}, Settings {shown(field.default)!r}"


@pytest.mark.parametrize("bad", ["localhost:8000", "ftp://host", "http://", "http://h:99999"])
def test_a_public_url_that_is_not_an_http_url_stops_start_up_naming_jobcast_url(monkeypatch, bad):
    """A review's finding: JOBCAST_URL was never checked; `jobcast follow` then blamed a
    --url the user never gave, and `jobcast enqueue` printed a URL no browser opens."""
    monkeypatch.setenv("JOBCAST_URL", bad)
    with pytest.raises(ValidationError, match="JOBCAST_URL"):
        Settings()


def test_a_misspelt_setting_is_named_with_the_one_it_probably_meant():
    """An operator review's finding: JOBCAST_TOKNE=... was ignored without a word, and the
    server ran open."""
    assert unknown_variables({"JOBCAST_TOKNE": "x", "JOBCAST_READ_MODE": "private",
                              "JOBCAST_TOKEN": "y", "JOBCAST_PORT": "8000", "HOME": "/"}) == [
        "JOBCAST_READ_MODE is not a Jobcast setting (did you mean JOBCAST_READ?): it is ignored",
        "JOBCAST_TOKNE is not a Jobcast setting (did you mean JOBCAST_TOKEN?): it is ignored"]


def test_every_jobcast_variable_the_compose_file_and_the_readme_name_is_known():
    """The list of variables read by something other than the settings stays complete: none
    the project documents is ever called unknown."""
    root = Path(__file__).resolve().parents[2]
    named = set()
    for doc in ("docker-compose.yml", "README.md", "Makefile"):
        named |= set(re.findall(r"\bJOBCAST_[A-Z][A-Z_]*[A-Z]\b", (root / doc).read_text()))
    named.discard("JOBCAST_TOKNE")  # the README's example of a misspelt name
    assert unknown_variables({name: "1" for name in named}) == []
