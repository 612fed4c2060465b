"""The documentation site: generated reference pages that match the code, every setting
documented from settings.py, every page in the navigation, no link out of the repository."""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from service.settings import MEANINGS, VARIABLES
from tests import support

DOCS = support.ROOT / "docs"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    return _generator()


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_the_generated_reference_pages_are_what_the_code_gives_now(generate) -> None:
    stale = [str(path.relative_to(support.ROOT)) for path in generate.stale()]
    assert stale == [], f"stale: {stale}; refresh with `{generate.REFRESH}` (or make docs)"


def test_a_stale_page_is_found_and_named(generate, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(generate, "REFERENCE", tmp_path)
    for path, text in generate.render().items():
        path.write_text(text, encoding="utf-8")
    assert generate.stale() == []
    settings_page = tmp_path / "settings.md"
    settings_page.write_text(settings_page.read_text().replace("`DATABASE_URL`", "`DB_URL`"))
    assert generate.stale() == [settings_page]
    assert generate.main(["--check"]) == 1


def test_every_setting_is_on_the_settings_page_with_its_default_and_meaning() -> None:
    page = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    rows = {}
    for line in page.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    names = [name for name, _field, _parse in VARIABLES]
    assert sorted(rows) == sorted(names)
    assert [name for name in names if not all(rows[name][1:])] == []


def test_every_setting_has_a_meaning_and_every_meaning_a_setting() -> None:
    names = {name for name, _field, _parse in VARIABLES}
    assert set(MEANINGS) == names
    assert [name for name, text in MEANINGS.items() if len(text.strip()) < 10] == []


def test_the_settings_page_shows_defaults_as_the_settings_take_them(generate) -> None:
    page = generate.settings_page()
    assert "| `CONFIRM_MAX_AGE` | `48h` |" in page
    assert "| `OPEN_RETENTION` | `395d` |" in page
    assert "| `SIGNUP_MIN_DURATION` | `100ms` |" in page
    assert "| `SECRET_KEYS` | required |" in page
    assert "| `SMTP_MAX_RATE` | empty |" in page


def test_every_command_and_route_is_in_the_reference(generate) -> None:
    from service.cli import parser

    cli = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    commands = parser()._subparsers._group_actions[0].choices
    assert [name for name in commands if f"## `newsletter {name}`" not in cli] == []
    api = (DOCS / "reference" / "http-api.md").read_text(encoding="utf-8")
    spec = yaml.safe_load((support.ROOT / "openapi.yaml").read_text())
    assert [path for path in spec["paths"] if f" {path}`" not in api] == []


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page() -> None:
    config = yaml.safe_load((support.ROOT / "mkdocs.yml").read_text())

    def entries(nav) -> list[str]:
        found = []
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                found += entries(value) if isinstance(value, list) else [value]
        return found

    listed = entries(config["nav"])
    on_disk = [str(path.relative_to(DOCS)) for path in _pages()]
    assert sorted(listed) == sorted(on_disk)


def test_no_page_links_outside_the_repository_or_to_a_missing_file() -> None:
    files = [*_pages(), support.ROOT / "README.md", support.ROOT / "CHANGELOG.md"]
    bad = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        if "../shared" in text or "/work/" in text:
            bad.append((path.name, "names a path outside the repository"))
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            resolved = (path.parent / target.partition("#")[0]).resolve()
            if not resolved.is_relative_to(support.ROOT) or not resolved.exists():
                bad.append((path.name, target))
    assert bad == []


def test_the_changelog_keeps_an_unreleased_section() -> None:
    changelog = (support.ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert '--8<-- "CHANGELOG.md"' in (DOCS / "changelog.md").read_text(encoding="utf-8")


REPO_PATH = re.compile(
    r"\b(?:service|tests|sql|bench|k8s|docs)/[\w./-]*?\.(?:py|sql|md|yaml|yml|csv|json|gz)(?![\w.])"
)


def test_every_file_the_docs_name_exists() -> None:
    """A path in prose (`service/outbox/kinds.py`) is not a link, so mkdocs does not check
    it: moving a file must not leave the docs pointing at where it was."""
    files = [*_pages(), support.ROOT / "README.md", support.ROOT / "CHANGELOG.md"]
    missing = sorted(
        {
            (path.name, named)
            for path in files
            for named in REPO_PATH.findall(path.read_text(encoding="utf-8"))
            if "NNN" not in named and "test_x" not in named and not (support.ROOT / named).exists()
        }
    )
    assert missing == []
