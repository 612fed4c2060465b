from service.settings import VARIABLES
from tests import support

README = (support.ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [name for name, _field, _parse in VARIABLES if f"`{name}`" not in README]
    assert missing == []


def test_the_readme_starts_with_the_two_commands() -> None:
    first_commands = README.index("make run"), README.index("make test")
    assert max(first_commands) < README.index("## Configuration")
