"""The README is the front page: short, starting with the two commands, its links alive."""

import re

from tests import support

README_PATH = support.ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_readme_is_at_most_12_kb() -> None:
    size = len(README.encode("utf-8"))
    assert size <= 12 * 1024, f"README.md is {size} bytes; move detail into docs/"


def test_the_readme_starts_with_the_two_commands() -> None:
    sections = [line for line in README.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Two commands"
    second = README.index(sections[1])
    assert README.index("make run") < second
    assert README.index("make test") < second


def test_every_relative_link_in_the_readme_points_to_a_file_that_exists() -> None:
    anchors = {
        github_slug(line.lstrip("#")) for line in README.splitlines() if line.startswith("#")
    }
    broken = []
    for target in LINK.findall(README):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        if path:
            resolved = (README_PATH.parent / path).resolve()
            if not resolved.is_relative_to(support.ROOT) or not resolved.exists():
                broken.append(target)
        elif anchor not in anchors:
            broken.append(target)
    assert broken == []


def test_the_readme_names_the_required_settings_and_links_the_settings_reference() -> None:
    from service.settings import REQUIRED

    assert all(f"`{name}`" in README for name in REQUIRED)
    assert "(docs/reference/settings.md)" in README
