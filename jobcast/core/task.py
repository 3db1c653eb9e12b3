"""Declaring a task: a generator function registered by name, with validated parameters.

A task's parameters are declared by its signature. Each one needs a type annotation and a
default; bounds go in ``Annotated[..., Field(ge=..., le=...)]``. pydantic builds the
validator and the JSON schema from that, so the web form, the API and the CLI all check the
same rules before anything is enqueued.

A task that takes a keyword-only ``start`` parameter is *resumable*: when RQ retries the job,
the worker passes the number of values already logged and the task continues from there.
Other tasks are replayed from the beginning, and the log drops the values it already has.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

TASKS: dict[str, "Task"] = {}
"""Every task declared in this process, by name (read it through :mod:`jobcast.core.registry`)."""


class ParamError(ValueError):
    """Parameters failed validation; ``errors`` lists each field and what is wrong."""

    def __init__(self, errors: list[dict[str, Any]]):
        """Keep the per-field errors and build a one-line message."""
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


@dataclass(frozen=True)
class Task:
    """A registered task: its generator function and parameter model."""

    name: str
    func: Callable[..., Iterator[Any]]
    model: type[BaseModel]
    description: str
    resumable: bool
    total: Callable[[dict], int | None] | None = None
    duration: Callable[[dict], float | None] | None = None

    def validate(self, params: Mapping[str, Any] | None, *, strict: bool = True) -> dict[str, Any]:
        """Return the checked, defaulted parameters, or raise ParamError.

        ``strict`` suits JSON (no "20" for an int); the CLI passes strings, so it is lax.
        """
        if params is not None and not isinstance(params, Mapping):
            raise ParamError([{"field": "params", "message": "must be an object"}])
        try:
            model = self.model.model_validate(dict(params or {}), strict=strict)
        except ValidationError as exc:
            raise ParamError([
                {"field": ".".join(["params", *map(str, e["loc"])]), "message": e["msg"]}
                for e in exc.errors()
            ]) from None
        return model.model_dump()

    def total_for(self, params: dict) -> int | None:
        """Number of values the job will yield, where the task knows it."""
        return self.total(params) if self.total else None

    def duration_for(self, params: dict) -> float | None:
        """Expected run time in seconds, where the task knows it."""
        return self.duration(params) if self.duration else None

    def iterate(self, params: dict, start: int = 0) -> Iterator[Any]:
        """Run the generator; a resumable task skips straight to value ``start``."""
        if self.resumable:
            return self.func(**params, start=start)
        return self.func(**params)

    def schema(self, caps: Mapping[str, float] | None = None) -> dict[str, Any]:
        """JSON schema of the parameters (drives the web form); with ``caps`` (a server's
        JOBCAST_PARAM_CAPS, ``{"name" or "task.name": limit}``) the numeric maxima are the
        server's, as its API checks them."""
        schema = self.model.model_json_schema()
        if caps:
            cap_schema(schema, self.name, caps)
        return schema


def cap_schema(schema: dict[str, Any], task_name: str, caps: Mapping[str, float]) -> None:
    """Lower the numeric maxima of ``task_name``'s parameter schema to ``caps``, in place."""
    for pname, prop in schema.get("properties", {}).items():
        cap = caps.get(f"{task_name}.{pname}", caps.get(pname))
        if cap is not None and prop.get("type") in ("integer", "number"):
            high = prop.get("maximum")
            prop["maximum"] = cap if high is None else min(high, cap)
            if prop["type"] == "integer":
                prop["maximum"] = int(prop["maximum"])


def task(name: str | None = None, *, total: Callable[[dict], int | None] | None = None,
         duration: Callable[[dict], float | None] | None = None):
    """Register a generator function as a task: ``@task()`` or ``@task("name")``."""

    def register(func: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """Build the parameter model from ``func``'s signature and record the task."""
        task_name = name or func.__name__
        fields: dict[str, Any] = {}
        resumable = False
        for p in inspect.signature(func, eval_str=True).parameters.values():
            if p.name == "start" and p.kind is p.KEYWORD_ONLY:
                resumable = True
                continue
            if p.annotation is p.empty or p.default is p.empty:
                raise TypeError(f"task {task_name}: parameter {p.name!r} needs a type and a default")
            fields[p.name] = (p.annotation, p.default)
        model = create_model(
            f"{task_name}_params",
            __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
            **fields,
        )
        doc = inspect.getdoc(func) or ""
        TASKS[task_name] = Task(task_name, func, model, doc.split("\n\n")[0], resumable,
                                 total, duration)
        return func

    return register
