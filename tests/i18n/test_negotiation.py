"""Choosing a language: the `lang` field, else Accept-Language (RFC 9110 section 12.5.4),
among LANGUAGES, else the first of them."""

from __future__ import annotations

import pytest

from service import i18n
from service.settings import Settings, SettingsError

ALL = i18n.SHIPPED


@pytest.mark.parametrize(
    ("header", "offered", "expected"),
    [
        ("de", ALL, "de"),
        ("de-AT", ALL, "de"),  # a region picks its language
        ("pt-BR,pt;q=0.9,en;q=0.8", ALL, "pt"),
        ("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5", ALL, "fr"),
        ("en;q=0.5, nl;q=0.9", ALL, "nl"),  # the q-values decide, not the order
        ("it;q=0.8, es;q=0.8", ALL, "it"),  # equal q-values: the header's order
        ("sv, fi;q=0.9", ALL, None),  # nothing offered matches
        ("sv, pl;q=0.2", ALL, "pl"),  # an unsupported first choice, a supported later one
        ("de;q=0, fr;q=0.1", ALL, "fr"),  # q=0 refuses
        ("de, DE-de;q=0", ALL, None),  # the refusal covers the language, case aside
        ("*", ("nl", "en"), "nl"),  # any: the first offered
        ("en, *;q=0.5", ("en", "de"), "en"),
        ("de, nl;q=0.5", ("nl", "en"), "nl"),  # LANGUAGES restricts
        ("es;q=1.5, it;q=abc, pl", ALL, "pl"),  # malformed q-values are skipped
        ("", ALL, None),
        (None, ALL, None),
        ("x" * 5000, ALL, None),
        ("de;;;, ,,, fr", ALL, "fr"),
    ],
)
def test_negotiate(header: str | None, offered: tuple[str, ...], expected: str | None) -> None:
    assert i18n.negotiate(header, offered) == expected


@pytest.mark.parametrize(
    ("field", "header", "offered", "expected"),
    [
        ("de", "fr", ALL, "de"),  # the field wins over the header
        ("pt-BR", None, ALL, "pt"),
        ("sv", "fr;q=0.3", ALL, "fr"),  # a field not offered: the header
        ("de", "fr", ("nl", "fr"), "fr"),  # LANGUAGES restricts the field too
        (None, "sv", ("nl", "fr"), "nl"),  # nothing matches: the first offered
        (None, None, ALL, "en"),
        ("not a tag!", "it", ALL, "it"),
        (42, None, ALL, "en"),
    ],
)
def test_choose(field: object, header: str | None, offered: tuple[str, ...], expected: str):
    assert i18n.choose(field, header, offered) == expected


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("de", "de"),
        ("DE-at", "de"),
        ("pt-BR", "pt"),
        ("zh-Hant-TW", "zh"),
        ("e", None),
        ("de_AT", None),
        ("de-", None),
        ("-de", None),
        ("de-AT-" + "x" * 40, None),
        ("", None),
    ],
)
def test_primary_subtag_of_a_bcp47_tag(tag: str, expected: str | None) -> None:
    assert i18n.primary(tag) == expected


GOOD = {
    "DATABASE_URL": "postgresql://app:pw@db:5432/news",
    "SMTP_URL": "smtp://relay:25",
    "PUBLIC_URL": "https://news.example.com/",
    "SECRET_KEYS": "k" * 32,
}


def test_languages_setting_defaults_to_every_shipped_one_and_keeps_the_order_given() -> None:
    assert Settings.from_env(GOOD).languages == i18n.SHIPPED
    assert i18n.SHIPPED[0] == "en" and len(i18n.SHIPPED) == 8
    settings = Settings.from_env({**GOOD, "LANGUAGES": "de-DE, en ,fr,de"})
    assert settings.languages == ("de", "en", "fr")


@pytest.mark.parametrize(
    ("value", "says"), [("de,sv", "no catalog ships for it"), ("de,e!", "not a BCP 47")]
)
def test_languages_setting_refuses_what_is_not_shipped(value: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**GOOD, "LANGUAGES": value})
    [problem] = caught.value.problems
    assert problem.startswith("LANGUAGES") and says in problem
