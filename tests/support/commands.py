"""Counting the Redis commands one client sends: what a test asserts a piece of code costs,
counted at the client, so that the other clients of the session's shared redis-server (its
web processes, its workers) add nothing to the count as the server's INFO commandstats would."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis


def count_commands(client: Redis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the commands ``client`` sends from now on (until the test ends), each
    command of a pipeline counted (MULTI and EXEC aside): what the benchmark's MONITOR counts."""
    names: list[str] = []
    direct, make_pipeline = client.execute_command, client.pipeline

    def execute_command(*args: Any, **options: Any) -> Any:
        """Count a command sent on its own, and send it."""
        names.append(str(args[0]).upper())
        return direct(*args, **options)

    def pipeline(*args: Any, **kwargs: Any):
        """A pipeline whose commands are counted when it is executed."""
        pipe = make_pipeline(*args, **kwargs)
        run = pipe.execute

        def execute(*a: Any, **k: Any) -> Any:
            """Count the pipeline's commands, and send them."""
            names.extend(str(cmd_args[0]).upper() for cmd_args, _ in pipe.command_stack)
            return run(*a, **k)

        pipe.execute = execute
        return pipe

    monkeypatch.setattr(client, "execute_command", execute_command)
    monkeypatch.setattr(client, "pipeline", pipeline)
    return names
