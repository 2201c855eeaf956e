"""The small HTML pages of ``campaign serve``, in Indonesian or English.

Plain strings with every value escaped (``html.escape``): the pages are four
fixed forms, not worth a template engine (Jinja2 stays in ``engine.templates``).
"""

from __future__ import annotations

from html import escape

from engine.serve.actions import Recipient

TOPIC_NAMES = {
    "id": {
        "onboarding": "panduan memulai",
        "retention": "tips dan kabar toko",
        "promo": "promo",
        "partnership": "kemitraan",
    },
    "en": {
        "onboarding": "getting started",
        "retention": "tips and store news",
        "promo": "promotions",
        "partnership": "partnerships",
    },
}

TEXT = {
    "id": {
        "title": "Berhenti berlangganan",
        "store": "Toko",
        "question": "Berhenti menerima email {topic} dari kami?",
        "all": "Berhenti menerima semua email dari kami",
        "button": "Berhenti berlangganan",
        "done_topic": "Anda tidak akan menerima email {topic} lagi.",
        "done_all": "Anda tidak akan menerima email apa pun dari kami lagi.",
        "undo": "Berubah pikiran? Anda dapat berlangganan lagi.",
        "undo_button": "Berlangganan lagi",
        "again": "Anda berlangganan lagi. Terima kasih!",
        "invalid": "Tautan ini tidak valid atau sudah tidak berlaku.",
        "bad_request": "Permintaan tidak valid.",
    },
    "en": {
        "title": "Unsubscribe",
        "store": "Store",
        "question": "Stop receiving {topic} emails from us?",
        "all": "Stop all emails from us",
        "button": "Unsubscribe",
        "done_topic": "You will not receive {topic} emails any more.",
        "done_all": "You will not receive any emails from us any more.",
        "undo": "Changed your mind? You can subscribe again.",
        "undo_button": "Subscribe again",
        "again": "You are subscribed again. Thank you!",
        "invalid": "This link is not valid or has expired.",
        "bad_request": "This request is not valid.",
    },
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;"
    "color:#222}button{font-size:1rem;padding:.6rem 1.2rem;margin-top:1rem}"
    "label{display:block;margin-top:1rem}.store{color:#666}"
)


def language(locale: str | None) -> str:
    return locale if locale in TEXT else "id"


def _page(lang: str, body: str) -> str:
    title = escape(TEXT[lang]["title"])
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _header(lang: str, who: Recipient) -> str:
    t = TEXT[lang]
    store = who.store_name or who.name or who.email
    return (
        f'<h1>{escape(t["title"])}</h1><p class="store">{escape(t["store"])}: {escape(store)}</p>'
    )


def topic_name(lang: str, topic: str) -> str:
    return TOPIC_NAMES[lang].get(topic, topic)


def unsubscribe_page(who: Recipient, topic: str) -> str:
    """The GET page: the question, a choice of all emails, a button that POSTs."""
    lang = language(who.locale)
    t = TEXT[lang]
    question = t["question"].format(topic=topic_name(lang, topic))
    return _page(
        lang,
        _header(lang, who)
        + f"<p>{escape(question)}</p>"
        + '<form method="post">'
        + '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        + f'<label><input type="checkbox" name="scope" value="all"> {escape(t["all"])}</label>'
        + f'<button type="submit">{escape(t["button"])}</button></form>',
    )


def unsubscribed_page(who: Recipient, topic: str, everything: bool) -> str:
    """After the POST: what was done, and a button to undo it."""
    lang = language(who.locale)
    t = TEXT[lang]
    done = t["done_all"] if everything else t["done_topic"].format(topic=topic_name(lang, topic))
    scope = '<input type="hidden" name="scope" value="all">' if everything else ""
    return _page(
        lang,
        _header(lang, who)
        + f"<p>{escape(done)}</p><p>{escape(t['undo'])}</p>"
        + '<form method="post"><input type="hidden" name="action" value="resubscribe">'
        + scope
        + f'<button type="submit">{escape(t["undo_button"])}</button></form>',
    )


def resubscribed_page(who: Recipient) -> str:
    lang = language(who.locale)
    return _page(lang, _header(lang, who) + f"<p>{escape(TEXT[lang]['again'])}</p>")


def error_page(message_key: str, locale: str | None = None) -> str:
    """A 4xx page without detail: a forged token learns nothing from it."""
    lang = language(locale)
    return _page(lang, f"<p>{escape(TEXT[lang][message_key])}</p>")
