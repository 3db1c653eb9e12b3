"""Task parameters are validated from the task's signature before anything is enqueued."""

import math

import pytest

from jobcast.core.registry import ParamError, UnknownTask, get_task, task


def test_sqrt_defaults_are_the_original_example():
    assert get_task("sqrt").validate({}) == {"n": 500, "interval": 1.0}


def test_sqrt_yields_sqrt_of_range_n():
    t = get_task("sqrt")
    assert list(t.iterate(t.validate({"n": 5, "interval": 0}))) == [math.sqrt(i) for i in range(5)]


def test_sqrt_resumes_from_start():
    t = get_task("sqrt")
    assert t.resumable
    assert list(t.iterate({"n": 5, "interval": 0}, start=3)) == [math.sqrt(3), 2.0]


def test_clock_yields_wall_clock_times_rate_times_duration():
    import time

    t = get_task("clock")
    before = time.time()
    values = list(t.iterate(t.validate({"rate": 100, "duration": 0.05})))
    assert len(values) == 5 == t.total_for({"rate": 100, "duration": 0.05})
    assert all(before <= v <= time.time() for v in values) and values == sorted(values)


def test_pi_estimate_converges():
    t = get_task("pi")
    values = list(t.iterate(t.validate({"samples": 200_000, "batch": 20_000})))
    assert len(values) == 10
    assert abs(values[-1] - math.pi) < 0.05


@pytest.mark.parametrize("params, field", [
    ({"n": "20"}, "params.n"),
    ({"n": True}, "params.n"),
    ({"n": 2.5}, "params.n"),
    ({"n": -1}, "params.n"),
    ({"n": 10**30}, "params.n"),
    ({"interval": float("nan")}, "params.interval"),
    ({"interval": float("inf")}, "params.interval"),
    ({"interval": -0.1}, "params.interval"),
    ({"bogus": 1}, "params.bogus"),
])
def test_bad_params_are_rejected_naming_the_field(params, field):
    with pytest.raises(ParamError) as err:
        get_task("sqrt").validate(params)
    assert err.value.errors[0]["field"] == field


def test_cli_strings_are_coerced_in_lax_mode():
    assert get_task("sqrt").validate({"n": "20", "interval": "0.5"}, strict=False) == {"n": 20, "interval": 0.5}


def test_unknown_task_raises():
    with pytest.raises(UnknownTask):
        get_task("nope")
    with pytest.raises(UnknownTask):
        get_task(["sqrt"])


def test_task_parameters_need_type_and_default():
    with pytest.raises(TypeError):
        @task("broken_for_test")
        def broken(n):
            yield n


def test_a_task_module_that_failed_to_import_raises_again_not_unknown_task(monkeypatch, tmp_path):
    """A review's finding: the modules were marked loaded before their import, so after one
    failed, every later job was told its task was unknown, the import's error never again."""
    from jobcast.core import registry
    from jobcast.core.settings import get_settings

    (tmp_path / "broken_tasks_mod.py").write_text("raise RuntimeError('a bug in the module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("JOBCAST_TASKS", "broken_tasks_mod")
    monkeypatch.setattr(registry, "_loaded", False)
    get_settings.cache_clear()
    try:
        for _ in range(2):
            with pytest.raises(RuntimeError, match="a bug in the module"):
                registry.get_task("sqrt")
    finally:
        get_settings.cache_clear()
