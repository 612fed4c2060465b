"""The layout of service/: packages by capability, each on a floor above what it uses.

A newcomer finds a thing where its name says, and no part reaches up into another: every
import between two parts of `service/` goes down to a lower floor (so no two parts can
import each other), no module imports a private name of another, no import cycle exists
even inside a package, and the top of `service/` keeps few loose modules. The floors are
the ones docs/development/architecture.md describes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests import support

SERVICE = support.ROOT / "service"

# Each part of service/ (a package, or a loose module) and its floor: a part may import
# only parts on lower floors. The ground holds what every capability may use.
FLOORS = {
    "keys": 0,
    "background": 0,
    "i18n": 0,
    "logs": 0,
    "settings": 1,
    "tokens": 1,
    "observability": 1,
    "db": 2,
    "web": 3,
    "mail": 3,
    "health": 3,
    "events": 3,
    "privacy": 4,
    "topics": 5,
    "tracking": 5,
    "bounces": 5,
    "signup": 6,
    "campaigns": 6,
    "manage": 7,
    "outbox": 8,
    "admin": 9,
    "devmode": 9,
    "app": 10,
    "cli": 11,
    "__main__": 12,
}
LOOSE_MODULES_MAX = 12


def module_name(path: Path) -> str:
    parts = list(path.relative_to(support.ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SERVICE.rglob("*.py"))}


def part(module: str) -> str:
    """`service.signup.subscribe` -> `signup`; `service.settings` -> `settings`."""
    return module.split(".")[1] if "." in module else module


def imports(module: str) -> Iterator[tuple[str, str, int]]:
    """(imported module, name taken from it or "", line) for every import of service code,
    at any depth (an import inside a function counts as much as one at the top)."""
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in MODULES:
                    yield submodule, "", node.lineno
                else:
                    yield node.module, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("service"):
                    yield alias.name, "", node.lineno


def graph() -> dict[str, set[str]]:
    return {
        module: {target for target, _, _ in imports(module) if target in MODULES} - {module}
        for module in MODULES
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_remains() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_every_part_of_service_has_a_floor() -> None:
    parts = {part(m) for m in MODULES if m != "service"}
    assert parts - set(FLOORS) == set(), "a new part of service/: give it a floor here"
    assert set(FLOORS) - parts == set(), "a part that no longer exists"


def test_every_import_between_parts_goes_down() -> None:
    upward = [
        f"{MODULES[module].relative_to(support.ROOT)}:{line} imports {target}"
        f" ({part(module)} floor {FLOORS[part(module)]} -> {part(target)} floor"
        f" {FLOORS[part(target)]})"
        for module in MODULES
        if module != "service"
        for target, _name, line in imports(module)
        if target in MODULES
        and target != "service"
        and part(target) != part(module)
        and FLOORS[part(target)] >= FLOORS[part(module)]
    ]
    assert upward == []


def test_no_module_takes_a_private_name_of_another() -> None:
    """`from service.x import _y`, or `x._y` on an imported module: an insides that its
    owner may change without looking for callers."""
    reached: list[str] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        imported = {}
        for target, name, line in imports(module):
            if name.startswith("_"):
                reached.append(f"{path.relative_to(support.ROOT)}:{line} takes {target}.{name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("service")
            ):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in MODULES:
                        imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                reached.append(
                    f"{path.relative_to(support.ROOT)}:{node.lineno} uses"
                    f" {imported[node.value.id]}.{node.attr}"
                )
    assert reached == []


def test_the_top_of_service_keeps_few_loose_modules() -> None:
    loose = sorted(p.name for p in SERVICE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= LOOSE_MODULES_MAX, loose


def test_every_module_says_what_it_is_for() -> None:
    """The code map (docs/reference/code-map.md) is made of these first lines."""
    silent = [
        str(path.relative_to(support.ROOT))
        for path in MODULES.values()
        if path.name != "__main__.py" and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert silent == []


def test_every_folder_of_service_ships_in_the_wheel() -> None:
    """setuptools takes only the packages pyproject.toml lists: a new folder left out is
    missing from the wheel and the image (the editable install of the suite would not
    notice: the import works from the checkout)."""
    import tomllib

    config = tomllib.loads((support.ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(path.relative_to(support.ROOT).parts)
        for path in SERVICE.rglob("*")
        if path.is_dir() and path.name != "__pycache__" and any(path.iterdir())
    } | {"service"}
    assert folders - listed == set(), "add them to [tool.setuptools] packages"
