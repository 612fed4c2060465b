"""openapi.yaml and the app's routes must describe the same HTTP surface."""

import re

import yaml
from starlette.routing import Route

from service.app import routes
from tests import support

SPEC = yaml.safe_load((support.ROOT / "openapi.yaml").read_text())
METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def served(settings) -> set[tuple[str, str]]:
    found = set()
    for route in routes(settings):
        assert isinstance(route, Route), f"unexpected route type {route!r}"
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        methods = {m.lower() for m in route.methods or ()}
        if "get" in methods:
            methods.discard("head")  # starlette answers HEAD for every GET route
        found |= {(path, m) for m in methods}
    return found


def documented() -> set[tuple[str, str]]:
    found = set()
    for path, item in SPEC["paths"].items():
        methods = {m for m in item if m in METHODS}
        if "get" in methods:
            methods.discard("head")
        found |= {(path, m) for m in methods}
    return found


def test_every_route_is_documented_and_every_documented_route_exists(settings) -> None:
    app_routes = served(settings)
    spec_routes = documented()
    assert sorted(app_routes - spec_routes) == [], "routes missing from openapi.yaml"
    assert sorted(spec_routes - app_routes) == [], "openapi.yaml documents routes the app lacks"


def test_every_operation_has_a_summary_and_responses() -> None:
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                assert operation.get("summary"), f"{method.upper()} {path} has no summary"
                assert operation.get("responses"), f"{method.upper()} {path} has no responses"


def test_admin_routes_declare_bearer_security() -> None:
    for path, item in SPEC["paths"].items():
        if path.startswith("/admin/api/"):
            for method, operation in item.items():
                if method in METHODS:
                    assert operation.get("security") == [{"bearer": []}], f"{method} {path}"
                    assert "401" in operation["responses"], f"{method} {path}"


def test_path_parameters_are_declared() -> None:
    for path, item in SPEC["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            if method not in METHODS:
                continue
            declared = set()
            for parameter in operation.get("parameters", []) + item.get("parameters", []):
                if "$ref" in parameter:
                    parameter = SPEC["components"]["parameters"][parameter["$ref"].split("/")[-1]]
                if parameter["in"] == "path":
                    declared.add(parameter["name"])
            assert names <= declared, f"{method.upper()} {path} lacks path parameters {names}"
