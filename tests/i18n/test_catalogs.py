"""The shipped catalogs are complete: what `make translations` checks, in CI too."""

from __future__ import annotations

import shutil

import pytest
from babel.messages.pofile import read_po, write_po

from service import i18n
from service.i18n import catalogs

TRANSLATED = [lang for lang in i18n.SHIPPED if lang != i18n.SOURCE]


@pytest.fixture(scope="module")
def source():
    """The texts of the templates and the code, extracted as `make translations` does."""
    return catalogs.extracted()


def test_the_texts_are_found_in_the_templates_and_the_code(source) -> None:
    ids = {m.id if isinstance(m.id, str) else m.id[0] for m in source if m.id}
    # A page, an email, a text chosen in Python (N_) and one in a Python dict.
    assert "Check your inbox" in ids
    assert "please confirm that you want to receive our newsletter." in ids
    assert "Please confirm your subscription" in ids
    assert "Subscription confirmed" in ids
    assert len(ids) > 250


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_text_is_translated_not_fuzzy_and_compiled(source, lang: str) -> None:
    assert catalogs.problems(lang, source) == []


def test_the_check_finds_a_missing_a_fuzzy_and_a_stale_entry(source, tmp_path, monkeypatch):
    """The check itself works: a catalog with one text left out, one marked fuzzy, one
    placeholder changed and a .mo older than its .po is reported on each count."""
    with (i18n.LOCALE_DIR / "de.po").open("rb") as po:
        catalog = read_po(po, locale="de")
    del catalog["Check your inbox"]
    catalog["Subscription confirmed"].flags.add("fuzzy")
    catalog["Leave %(topics)s"].string = "%(themen)s abbestellen"
    catalog["Sign-up removed"].string = "Die Anmeldung ist weg"  # the .mo says otherwise
    with (tmp_path / "de.po").open("wb") as po:
        write_po(po, catalog)
    shutil.copy(i18n.LOCALE_DIR / "de.mo", tmp_path / "de.mo")
    monkeypatch.setattr(catalogs, "_po", lambda lang: tmp_path / f"{lang}.po")
    monkeypatch.setattr(catalogs, "ROOT", tmp_path)

    found = catalogs.problems("de", source)

    assert "de: missing: 'Check your inbox'" in found
    assert "de: fuzzy (the English changed): 'Subscription confirmed'" in found
    assert "de: placeholders differ from the English: 'Leave %(topics)s'" in found
    assert "de: the .mo is older than the .po: run make translations" in found


def test_the_compiled_catalogs_ship_in_the_package() -> None:
    """The .mo files sit in the package (pyproject.toml's package data): the wheel and
    the image carry them without a build step."""
    for lang in TRANSLATED:
        assert (i18n.LOCALE_DIR / f"{lang}.mo").is_file(), lang
        assert i18n.gettext(lang, "Subscribe") != "Subscribe", lang
