"""One source for the HTTP surface: the app's routes and what each view declares.

Every route is in the OpenAPI document with its methods and path parameters, every documented
operation is a route, and every view declares who may call it; the guard reads the same
declaration, for blueprints registered later too. No server, no Redis: the app's url_map, the
document builder and the guard in a request context.
"""

from __future__ import annotations

import pytest
from flask import Blueprint, Flask

from jobcast.core.settings import Settings
from jobcast.core.urls import JOB_PATHS
from jobcast.web.app import create_app
from jobcast.web.openapi import document
from jobcast.web.security import Unauthorized, guard
from jobcast.web.surface import Access, declared, public

# Nothing connects to it: no request here reaches a view.
NOWHERE = "redis://127.0.0.1:1/0"
TOKEN = "s3cret"
# HTTP gives every GET a HEAD, and Flask answers OPTIONS: no operation of their own.
IMPLIED = {"HEAD", "OPTIONS"}


@pytest.fixture(params=["public", "private"])
def served(request) -> tuple[Flask, Settings]:
    """The app and its settings, in each read mode (a token makes it private)."""
    cfg = Settings(redis_url=NOWHERE, token=TOKEN if request.param == "private" else "")
    assert cfg.read_mode == request.param
    return create_app({"JOBCAST": cfg, "TESTING": True}), cfg


def openapi_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: ``/jobs/<job_id>`` is ``/jobs/{job_id}``."""
    return rule.replace("<", "{").replace(">", "}")


def documented_routes(app: Flask) -> dict[str, set[str]]:
    """Each documented route's OpenAPI path and methods (lower case), from the url_map."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if declared(app.view_functions[rule.endpoint]).documented:
            methods = {m.lower() for m in rule.methods - IMPLIED}
            routes.setdefault(openapi_path(rule.rule), set()).update(methods)
    return routes


def test_every_route_is_documented_with_its_methods_and_every_operation_is_a_route(served):
    app, cfg = served
    doc = document(app, cfg)
    assert {path: set(ops) for path, ops in doc["paths"].items()} == documented_routes(app)
    # Only Flask's static files are left out, by their declaration.
    left_out = {endpoint for endpoint, view in app.view_functions.items()
                if not declared(view).documented}
    assert left_out == {"static"}


def test_every_operation_lists_its_routes_path_parameters(served):
    app, cfg = served
    doc = document(app, cfg)
    for rule in app.url_map.iter_rules():
        path = openapi_path(rule.rule)
        for method, op in doc["paths"].get(path, {}).items():
            in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert in_path == set(rule.arguments), (path, method)


def test_every_view_declares_who_may_call_it(served):
    app, _ = served
    undeclared = [endpoint for endpoint, view in app.view_functions.items()
                  if declared(view).access is None]
    assert undeclared == []


def test_the_urls_of_a_job_are_routes_that_a_view_link_opens(served):
    app, _ = served
    scoped = {rule.rule for rule in app.url_map.iter_rules()
              if declared(app.view_functions[rule.endpoint]).access is Access.JOB}
    assert set(JOB_PATHS.values()) <= scoped


def test_each_operation_states_the_access_its_view_declares():
    cfg = Settings(redis_url=NOWHERE, token=TOKEN)
    paths = document(create_app({"JOBCAST": cfg, "TESTING": True}), cfg)["paths"]
    bearer, session, link = {"bearerAuth": []}, {"session": []}, {"viewLink": []}
    assert paths["/jobs/{job_id}/events"]["get"]["security"] == [bearer, session, link]
    assert paths["/api/jobs"]["get"]["security"] == [bearer, session]
    assert paths["/api/jobs"]["post"]["security"] == [bearer]
    assert paths["/healthz"]["get"]["security"] == [{}]
    # A page answers a browser without the token with the token form.
    assert list(paths["/jobs/{job_id}"]["get"]["responses"]["401"]["content"]) == ["text/html"]


def test_operation_ids_are_unique_and_every_reference_resolves(served):
    app, cfg = served
    doc = document(app, cfg)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    schemas = doc["components"]["schemas"]

    def refs(node):
        """Every $ref below ``node``."""
        if isinstance(node, dict):
            yield from ([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_a_blueprint_registered_later_is_guarded_by_what_its_views_declare():
    cfg = Settings(redis_url=NOWHERE, token=TOKEN)
    app = create_app({"JOBCAST": cfg, "TESTING": True})
    extra = Blueprint("extra", __name__)

    @extra.get("/open")
    @public
    def open_view():
        """Anyone may call this."""
        return "open"

    @extra.get("/closed")
    def closed_view():
        """Declares nothing: the token in private mode."""
        return "closed"

    app.register_blueprint(extra)
    with app.test_request_context("/open"):
        assert guard() is None
    with app.test_request_context("/closed"):
        with pytest.raises(Unauthorized):
            guard()
    with app.test_request_context("/closed", headers={"Authorization": f"Bearer {TOKEN}"}):
        assert guard() is None
    assert "/open" in document(app, cfg)["paths"]
