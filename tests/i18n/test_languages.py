"""Every page and email about a subscriber in their language, with Content-Language (and
`<html lang>`): the sign-up's `lang` field or Accept-Language picks it, it is stored, the
person changes it on their page, the import and the export carry it, and a campaign's
translation goes to the recipients of that language."""

from __future__ import annotations

import json
import re

import pytest

from tests import manage_support, people, support
from tests.signup_helpers import links, subscribe, subscribe_json, wait_until

# What each language's confirmation says, written here (not read from the catalogs), so
# a wrong or missing translation fails: the subject, the button of the email, the page's
# heading and the thank-you page's heading.
CONFIRMATION = {
    "en": (
        "Please confirm your subscription",
        "Confirm my subscription",
        "Confirm your subscription",
        "Check your inbox",
    ),
    "de": (
        "Bitte bestätigen Sie Ihre Anmeldung",
        "Anmeldung bestätigen",
        "Anmeldung bestätigen",
        "Bitte prüfen Sie Ihr Postfach",
    ),
    "fr": (
        "Veuillez confirmer votre abonnement",
        "Confirmer mon abonnement",
        "Confirmez votre abonnement",
        "Consultez votre boîte de réception",
    ),
    "es": (
        "Confirma tu suscripción",
        "Confirmar mi suscripción",
        "Confirma tu suscripción",
        "Revisa tu bandeja de entrada",
    ),
    "it": (
        "Conferma la tua iscrizione",
        "Conferma la mia iscrizione",
        "Conferma la tua iscrizione",
        "Controlla la tua casella di posta",
    ),
    "nl": (
        "Bevestig je inschrijving",
        "Mijn inschrijving bevestigen",
        "Bevestig je inschrijving",
        "Kijk in je inbox",
    ),
    "pt": (
        "Confirme a sua inscrição",
        "Confirmar a minha inscrição",
        "Confirme a sua inscrição",
        "Verifique a sua caixa de entrada",
    ),
    "pl": (
        "Potwierdź subskrypcję newslettera",
        "Potwierdzam subskrypcję",
        "Potwierdź subskrypcję",
        "Sprawdź swoją skrzynkę",
    ),
}
GREETING = {
    "en": "Hello Ada,",
    "de": "Hallo Ada,",
    "fr": "Bonjour Ada,",
    "es": "Hola, Ada:",
    "it": "Ciao Ada,",
    "nl": "Hallo Ada,",
    "pt": "Olá, Ada,",
    "pl": "Dzień dobry, Ada,",
}


def _html_lang(text: str) -> str | None:
    found = re.search(r'<html lang="([^"]*)">', text)
    return found.group(1) if found else None


async def _confirmation(smtp, db, email: str) -> support.Received:
    messages = await wait_until(lambda: _async(smtp.to(email)))
    await wait_until(lambda: _async(True))
    return messages[-1]


async def _async(value):
    return value


@pytest.mark.parametrize("lang", list(CONFIRMATION))
async def test_each_language_confirmation_email_and_pages(client, db, smtp, lang: str) -> None:
    subject, button, heading, thanks = CONFIRMATION[lang]
    email = f"ada.{lang}@example.com"

    answer = await subscribe(client, email, name="Ada", lang=lang)

    assert answer.status_code == 200
    assert answer.headers["content-language"] == lang
    assert _html_lang(answer.text) == lang and f"<h1>{thanks}</h1>" in answer.text
    assert await db.fetchval("SELECT lang FROM subscribers WHERE email = $1", email) == lang
    message = await _confirmation(smtp, db, email)
    assert message.message["Subject"] == subject
    assert message.message["Content-Language"] == lang
    html, plain = message.part("html"), message.part("plain")
    assert _html_lang(html) == lang
    assert button in html and GREETING[lang] in html and plain.startswith(GREETING[lang])
    assert "48" in plain  # the link's lifetime, in the language's plural

    page = await client.get(links(message)["confirm"])
    assert page.status_code == 200
    assert page.headers["content-language"] == lang
    assert _html_lang(page.text) == lang and f"<h1>{heading}</h1>" in page.text


async def test_accept_language_picks_the_language_with_q_values(client, db, smtp) -> None:
    cases = {
        "q@example.com": ("fr-CH;q=0.4, de-AT, en;q=0.8", "de"),
        "br@example.com": ("pt-BR,pt;q=0.9", "pt"),
        "sv@example.com": ("sv, fi;q=0.9", "en"),  # nothing offered: the first of LANGUAGES
        "zero@example.com": ("nl;q=0, it;q=0.1", "it"),
    }
    for email, (header, _lang) in cases.items():
        answer = await subscribe_json(client, {"email": email}, headers={"accept-language": header})
        assert answer.status_code == 202
    for email, (_header, lang) in cases.items():
        assert await db.fetchval("SELECT lang FROM subscribers WHERE email = $1", email) == lang
        message = await _confirmation(smtp, db, email)
        assert message.message["Content-Language"] == lang
        assert message.message["Subject"] == CONFIRMATION[lang][0]


async def test_the_lang_field_wins_over_accept_language(client, db, smtp) -> None:
    await subscribe(client, "field@example.com", lang="es-MX", **{})
    await subscribe_json(
        client, {"email": "json@example.com", "lang": "it"}, headers={"accept-language": "de"}
    )
    assert (
        await db.fetchval("SELECT lang FROM subscribers WHERE email = 'field@example.com'") == "es"
    )
    assert (
        await db.fetchval("SELECT lang FROM subscribers WHERE email = 'json@example.com'") == "it"
    )


async def test_languages_setting_restricts_the_choice(app_factory, db, smtp) -> None:
    async with app_factory(languages=("nl", "en")) as (_app, client):
        await subscribe_json(
            client,
            {"email": "a@example.com", "lang": "de"},
            headers={"accept-language": "de, en;q=0.5"},
        )
        await subscribe_json(client, {"email": "b@example.com"}, headers={"accept-language": "sv"})
        page = await client.get("/manage", headers={"accept-language": "de, fr"})
        assert page.headers["content-language"] == "nl"  # none wanted is offered: the first
        assert "Inschrijving beheren" in page.text
        message = await _confirmation(smtp, db, "b@example.com")
        assert message.message["Content-Language"] == "nl"
    rows = dict(await db.fetch("SELECT email, lang FROM subscribers ORDER BY email"))
    assert rows == {"a@example.com": "en", "b@example.com": "nl"}


@pytest.mark.parametrize("bad", ["de_DE", "e", "x" * 80, "de-", 42, ["de"]])
async def test_a_malformed_lang_is_a_field_error_and_nothing_is_stored(client, db, bad) -> None:
    answer = await subscribe_json(client, {"email": "bad@example.com", "lang": bad})
    assert answer.status_code == 422
    assert set(answer.json()["errors"]) == {"lang"}
    form = await client.post(
        "/subscribe",
        data={"email": "bad@example.com", "lang": str(bad)},
        headers={"accept-language": "fr"},
    )
    assert form.status_code == 400 and form.headers["content-language"] == "fr"
    assert "étiquette BCP 47" in form.text  # the field's message in the page's language
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_a_page_about_nobody_follows_the_browser(client) -> None:
    page = await client.get("/manage", headers={"accept-language": "pl-PL,pl;q=0.9,en;q=0.5"})
    assert page.headers["content-language"] == "pl" and _html_lang(page.text) == "pl"
    assert "Zarządzaj subskrypcją" in page.text
    assert "accept-language" in page.headers["vary"].lower()
    missing = await client.get("/no/such/page", headers={"accept-language": "it"})
    assert missing.status_code == 404 and "<h1>Pagina non trovata</h1>" in missing.text
    # email-validator's own messages are English: the page says it in its language.
    bad = await client.post("/manage", data={"email": "ada@"}, headers={"accept-language": "de"})
    assert bad.status_code == 400 and bad.headers["content-language"] == "de"
    assert "Diese E-Mail-Adresse ist ungültig." in bad.text


async def test_the_person_changes_the_language_on_their_page(client, db, smtp) -> None:
    email = "lang@example.org"
    sid = await people.add_subscriber(db, email, name="Ada")
    footer_page = await client.get(manage_support.manage_path(sid))
    assert footer_page.headers["content-language"] == "en"

    link = await manage_support.fresh_link(client, smtp, sid, email, db)
    assert manage_support.mails_to(smtp, email)[-1].message["Content-Language"] == "en"
    page, session = await manage_support.open_data(client, link)
    assert '<option value="en" lang="en" selected>English</option>' in page.text
    assert '<option value="de" lang="de">Deutsch</option>' in page.text

    changed = await manage_support.act(client, session, "language", lang="de-CH")
    assert changed.status_code == 200
    assert changed.headers["content-language"] == "de" and _html_lang(changed.text) == "de"
    assert "Ihre Sprache ist gespeichert." in changed.text
    assert '<option value="de" lang="de" selected>Deutsch</option>' in changed.text
    assert await db.fetchval("SELECT lang FROM subscribers WHERE id = $1", sid) == "de"

    refused = await manage_support.act(client, session, "language", lang="sv")
    assert refused.status_code == 400
    assert "Bitte wählen Sie eine der angebotenen Sprachen." in refused.text
    assert await db.fetchval("SELECT lang FROM subscribers WHERE id = $1", sid) == "de"

    # From now on the person's pages and emails are German.
    footer_page = await client.get(manage_support.manage_path(sid))
    assert footer_page.headers["content-language"] == "de"
    await db.execute("UPDATE rate_limits SET last_at = now() - interval '1 hour'")
    await manage_support.fresh_link(client, smtp, sid, email, db)
    latest = manage_support.mails_to(smtp, email)[-1]
    assert latest.message["Content-Language"] == "de"
    assert latest.message["Subject"] == "Ihr Link, um Ihre Daten einzusehen oder zu ändern"


CAMPAIGN = {
    "name": "May issue",
    "subject": "May news",
    "html": "<p>Hello {{ name }}</p>",
    "text": "Hello {{ name }}\n",
    "translations": {
        "de": {"subject": "Neues im Mai", "html": "<p>Hallo {{ name }}</p>", "text": "Hallo\n"},
        "pl-PL": {"subject": "Nowości w maju", "html": "<p>Cześć</p>", "text": "Cześć\n"},
    },
}


async def test_each_recipient_gets_the_campaign_in_their_language(
    client, db, smtp, admin_headers
) -> None:
    readers = {
        "de@example.org": "de",
        "pl@example.org": "pl",
        "fr@example.org": "fr",
        "en@example.org": None,
    }
    for email, lang in readers.items():
        sid = await people.add_subscriber(db, email, name="Ada")
        await db.execute("UPDATE subscribers SET lang = $1 WHERE id = $2", lang, sid)
    created = await client.post("/admin/api/campaigns", json=CAMPAIGN, headers=admin_headers)
    assert created.status_code == 201, created.text
    stored = await db.fetchval("SELECT translations FROM campaigns")
    assert set(json.loads(stored)) == {"de", "pl"}
    campaign_id = created.json()["id"]
    queued = await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers)
    assert queued.json()["queued"] == 4
    await smtp.wait_for(4, timeout=30)

    got = {m.to: m for m in smtp.messages}
    de = got["de@example.org"]
    assert de.message["Subject"] == "Neues im Mai" and de.message["Content-Language"] == "de"
    assert "<p>Hallo Ada</p>" in de.part("html") and "Abmelden" in de.part("html")
    assert "Sie erhalten diese E-Mail" in de.part("plain")
    pl = got["pl@example.org"]
    assert pl.message["Subject"] == "Nowości w maju" and pl.message["Content-Language"] == "pl"
    assert "Wypisz się" in pl.part("html")
    # No French variant: the campaign's own texts, in the first of LANGUAGES, footer too.
    for email in ("fr@example.org", "en@example.org"):
        own = got[email]
        assert own.message["Subject"] == "May news" and own.message["Content-Language"] == "en"
        assert "You receive this email because" in own.part("plain")


@pytest.mark.parametrize(
    ("translations", "field"),
    [
        ({"xx-YY": {"subject": "s", "html": "h", "text": "t"}}, "translations.xx-YY"),
        ({"de": {"subject": "s", "html": "{{ nope }}", "text": "t"}}, "translations.de.html"),
        ({"de": {"subject": "s", "html": "h"}}, "translations.de.text"),
        ({"de": {"subject": "a\nb", "html": "h", "text": "t"}}, "translations.de.subject"),
        ({"de": {"subject": "s", "html": "h", "text": "t", "x": 1}}, "translations.de.x"),
        ({"de": "Hallo"}, "translations.de"),
        (["de"], "translations"),
        (
            {
                "de": {"subject": "s", "html": "h", "text": "t"},
                "de-AT": {"subject": "s", "html": "h", "text": "t"},
            },
            "translations.de-AT",
        ),
    ],
)
async def test_bad_translations_are_field_errors(
    client, db, admin_headers, translations, field
) -> None:
    body = {**CAMPAIGN, "translations": translations}
    answer = await client.post("/admin/api/campaigns", json=body, headers=admin_headers)
    assert answer.status_code == 422
    fields = answer.json()["fields"]
    assert field in fields, fields
    assert fields.get("translations") != "unknown field"  # checked, not refused unread
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_import_and_export_carry_the_language(client, db, admin_headers) -> None:
    lines = [
        {
            "email": "at@example.org",
            "lang": "de-AT",
            "consented_at": "2026-01-02T03:04:05Z",
            "consent_source": "shop checkout",
        },
        {
            "email": "sv@example.org",
            "lang": "sv",
            "consented_at": "2026-01-02T03:04:05Z",
            "consent_source": "shop checkout",
        },
        {"email": "bad@example.org", "lang": "not a tag"},
        {"email": "pending@example.org", "lang": "pt-BR"},
    ]
    body = b"\n".join(json.dumps(line).encode() for line in lines)
    answer = await client.post("/admin/api/subscribers/import", content=body, headers=admin_headers)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["imported"], result["pending"]) == (2, 1)
    assert [e["line"] for e in result["errors"]] == [3] and "lang" in result["errors"][0]["error"]
    rows = dict(await db.fetch("SELECT email, lang FROM subscribers"))
    # sv ships no catalog: the person is imported and gets the first of LANGUAGES.
    assert rows == {"at@example.org": "de", "sv@example.org": None, "pending@example.org": "pt"}

    export = await client.get("/admin/api/subscribers/at@example.org", headers=admin_headers)
    assert export.json()["subscriber"]["lang"] == "de"
