"""Checks the shipped catalogs (`make translations`, and tests/i18n/test_catalogs.py in CI).

A build tool, never imported by the service: it needs Babel (a development dependency).
For every shipped language but English it finds what a reader would otherwise see in
English or garbled: a text of the templates or the code missing from the catalog, one
marked fuzzy (changed in English since it was translated), an empty translation, a
translation whose `%(name)s` placeholders differ from the English, and a compiled .mo that
does not say what its .po says (the .mo files are committed, so the wheel and the image
carry them without a build step).
"""

from __future__ import annotations

import gettext
import io
import re
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from service import i18n

ROOT = Path(__file__).resolve().parent.parent.parent
BABEL_CFG = ROOT / "babel.cfg"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def extracted() -> Catalog:
    """The texts of the templates and the code, as `pybabel extract -F babel.cfg` finds them."""
    with BABEL_CFG.open(encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(io.StringIO(cfg.read()))
    catalog = Catalog()
    for filename, lineno, message, comments, context in extract_from_dir(
        str(ROOT), method_map, options_map, keywords=KEYWORDS
    ):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def _po(lang: str) -> Path:
    return i18n.LOCALE_DIR / f"{lang}.po"


def problems(lang: str, source: Catalog) -> list[str]:
    """What is wrong with one language's catalog, one line each (none: it is complete)."""
    path = _po(lang)
    if not path.exists():
        return [f"{lang}: no catalog at {path.relative_to(ROOT)}"]
    with path.open("rb") as po:
        catalog = read_po(po, locale=lang)
    found: list[str] = []
    for message in source:
        if not message.id:
            continue
        shown = message.id if isinstance(message.id, str) else message.id[0]
        translated = catalog.get(message.id)
        if translated is None:
            found.append(f"{lang}: missing: {shown[:70]!r}")
            continue
        if translated.fuzzy:
            found.append(f"{lang}: fuzzy (the English changed): {shown[:70]!r}")
        strings = [translated.string] if isinstance(translated.string, str) else translated.string
        if not all(strings) or len(strings) != (
            1 if isinstance(message.id, str) else catalog.num_plurals
        ):
            found.append(f"{lang}: untranslated: {shown[:70]!r}")
            continue
        wanted = set(_PLACEHOLDER.findall(shown if isinstance(message.id, str) else message.id[1]))
        for string in strings:
            if set(_PLACEHOLDER.findall(string)) != wanted:
                found.append(f"{lang}: placeholders differ from the English: {shown[:70]!r}")
                break
    found += _compiled_differs(lang, catalog)
    return found


def _compiled_differs(lang: str, catalog: Catalog) -> list[str]:
    """The committed .mo against its .po: run `make translations` after editing a .po."""
    path = _po(lang).with_suffix(".mo")
    if not path.exists():
        return [f"{lang}: not compiled ({path.relative_to(ROOT)} is missing)"]
    with path.open("rb") as mo:
        compiled = gettext.GNUTranslations(mo)._catalog  # type: ignore[attr-defined]
    for message in catalog:
        if not message.id or message.fuzzy:
            continue
        if isinstance(message.id, str):
            if compiled.get(message.id) != message.string:
                return [f"{lang}: the .mo is older than the .po: run make translations"]
        else:
            for n, string in enumerate(message.string):
                if compiled.get((message.id[0], n)) != string:
                    return [f"{lang}: the .mo is older than the .po: run make translations"]
    return []


def main() -> int:
    source = extracted()
    found = [
        line for lang in i18n.SHIPPED if lang != i18n.SOURCE for line in problems(lang, source)
    ]
    for line in found:
        print(line, file=sys.stderr)
    texts = sum(1 for message in source if message.id)
    if found:
        print(f"{len(found)} problems in the catalogs ({texts} texts)", file=sys.stderr)
        return 1
    print(f"catalogs complete: {texts} texts in {len(i18n.SHIPPED) - 1} languages besides English")
    return 0


if __name__ == "__main__":
    sys.exit(main())
