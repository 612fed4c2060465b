"""The subscriber's language: which languages ship, choosing one, and translated text.

Texts are English in the code and the templates (the msgids); each other shipped language
has a gettext catalog in service/i18n/locale/{lang}.po, compiled to the {lang}.mo beside it
and committed, so the wheel and the image carry them without a build
step (`make translations` extracts, updates, compiles and checks them; the suite checks
that no shipped catalog has a missing or fuzzy entry and that each .mo matches its .po).

A language is chosen once, when the person signs up (the form's `lang` field, else the
browser's `Accept-Language`), stored with the subscriber and used for every page and email
about them; pages that know nobody (the sign-up form, the lost-link form) negotiate from
the request each time.
"""

from __future__ import annotations

import functools
import gettext as _gettext
import re
from pathlib import Path
from typing import Any

import jinja2

# English first: the source language, and the fallback when nothing else fits.
SHIPPED: tuple[str, ...] = ("en", "de", "fr", "es", "it", "nl", "pt", "pl")
SOURCE = "en"
# Each language in its own words, for the person's choice on their page.
NAMES: dict[str, str] = {
    "en": "English",
    "de": "Deutsch",
    "fr": "Français",
    "es": "Español",
    "it": "Italiano",
    "nl": "Nederlands",
    "pt": "Português",
    "pl": "Polski",
}
LOCALE_DIR = Path(__file__).resolve().parent / "locale"

# RFC 5646 in its common shape: a 2-3 letter language, then subtags of 1-8 letters or
# digits (script, region, variant...). Grandfathered irregular tags are not accepted.
_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
_RANGE = re.compile(r"\s*([A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)\s*(?:;\s*q\s*=\s*([0-9.]+)\s*)?")
HEADER_MAX = 512  # longer Accept-Language headers are read only this far
TAG_MAX = 35  # RFC 5646 section 4.4.1 advises 35 characters at least; more is not a tag


def N_(message: str) -> str:
    """Marks a text for extraction where it is defined; it is translated where shown."""
    return message


def primary(tag: str) -> str | None:
    """The primary language subtag of a BCP 47 tag, lower case (`de-AT` -> `de`), or None
    when `tag` is not a well-formed tag."""
    if not isinstance(tag, str) or len(tag) > TAG_MAX or not _TAG.fullmatch(tag.strip()):
        return None
    return tag.strip().split("-", 1)[0].lower()


def parse_languages(text: str) -> tuple[str, ...]:
    """LANGUAGES: comma-separated tags, each shipped; empty: every shipped language."""
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    if not wanted:
        return SHIPPED
    languages: list[str] = []
    for tag in wanted:
        lang = primary(tag)
        if lang is None:
            raise ValueError(f"entry {tag[:40]!r} is not a BCP 47 language tag")
        if lang not in SHIPPED:
            raise ValueError(
                f"entry {tag!r}: no catalog ships for it (shipped: {', '.join(SHIPPED)})"
            )
        if lang not in languages:
            languages.append(lang)
    return tuple(languages)


def negotiate(header: str | None, offered: tuple[str, ...]) -> str | None:
    """The offered language the `Accept-Language` header (RFC 9110 section 12.5.4) likes
    best, or None. Ranges match by their primary subtag (`de-AT` and `de` both give `de`,
    `pt-BR` gives `pt`); among equal q-values the header's order wins; `q=0` refuses a
    language, and `*` stands for every offered language the header does not name."""
    if not header or not offered:
        return None
    ranked: list[tuple[float, int, str]] = []
    refused: set[str] = set()
    named: set[str] = set()
    for position, item in enumerate(header[:HEADER_MAX].split(",")):
        match = _RANGE.fullmatch(item)
        if match is None:
            continue
        tag, q = match.group(1), match.group(2)
        try:
            quality = 1.0 if q is None else float(q)
        except ValueError:
            continue
        if not 0 <= quality <= 1:
            continue
        lang = "*" if tag == "*" else tag.split("-", 1)[0].lower()
        if lang != "*":
            named.add(lang)
        if quality == 0:
            refused.add(lang)
        elif lang == "*" or lang in offered:
            ranked.append((-quality, position, lang))
    for _quality, _position, lang in sorted(ranked):
        if lang == "*":
            rest = [o for o in offered if o not in named and o not in refused]
            if rest and "*" not in refused:
                return rest[0]
        elif lang not in refused:
            return lang
    return None


def choose(field: Any, header: str | None, offered: tuple[str, ...]) -> str:
    """A sign-up's language: the `lang` field when it names an offered language, else the
    best of `Accept-Language`, else the first offered (English by default)."""
    lang = primary(field) if isinstance(field, str) else None
    if lang in offered:
        return lang
    return negotiate(header, offered) or (offered[0] if offered else SOURCE)


def spoken(stored: str | None, offered: tuple[str, ...]) -> str:
    """The language of a subscriber's pages and emails: their stored one (kept even if
    LANGUAGES shrank since they chose it: a catalog ships for it), else the first offered."""
    if stored in SHIPPED:
        return stored  # type: ignore[return-value]
    return offered[0] if offered else SOURCE


@functools.cache
def translations(lang: str) -> _gettext.NullTranslations:
    """The compiled catalog of a shipped language (English: the texts as written)."""
    if lang == SOURCE or lang not in SHIPPED:
        return _gettext.NullTranslations()
    path = LOCALE_DIR / f"{lang}.mo"
    with path.open("rb") as catalog:
        return _gettext.GNUTranslations(catalog)


def gettext(lang: str | None, message: str) -> str:
    """`message` in `lang` (unknown or untranslated: as written; "" stays "", not the
    catalog's header)."""
    if not message or not isinstance(message, str):
        return message
    return translations(lang or SOURCE).gettext(message)


def ngettext(lang: str | None, singular: str, plural: str, n: int) -> str:
    """The singular or a plural of `lang` for `n` (Polish has three)."""
    return translations(lang or SOURCE).ngettext(singular, plural, n)


@jinja2.pass_context
def _context_gettext(context: jinja2.runtime.Context, message: str) -> str:
    return gettext(context.get("lang"), message)


@jinja2.pass_context
def _context_ngettext(context: jinja2.runtime.Context, singular: str, plural: str, n: int) -> str:
    return ngettext(context.get("lang"), singular, plural, n)


def install(env: jinja2.Environment) -> None:
    """jinja2's i18n extension (`{% trans %}`, `_()`) speaking each render's `lang`: one
    environment for every language, the language a template variable like any other.
    New-style gettext: variables are passed by name and HTML-escaped; `trimmed` joins a
    block's lines, so the msgids do not carry the templates' line breaks."""
    env.add_extension("jinja2.ext.i18n")
    env.globals["lang"] = SOURCE  # a render that names no language speaks English
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_callables(  # type: ignore[attr-defined]
        _context_gettext, _context_ngettext, newstyle=True
    )
    # `{{ text | translate }}`: a text chosen in Python (marked there with N_) translated
    # as it is, never %-formatted, so a reason taken from an exception cannot break it.
    env.filters["translate"] = _context_gettext
