"""The stripped reply: the newest text without the quoted history and the signature, in the shapes
mail clients write them (several languages), from text or from HTML."""

from __future__ import annotations

import time

import pytest
from mailparser_reply.parser import EmailMessage

from gateway.inbound.reply import LANGUAGES, html_text, stripped_reply

CASES = [
    ("gmail_en", "Thanks, that works.\n\nOn Tue, 1 Dec 2026 at 10:00, Support <s@x.com> wrote:\n> Hello\n> try again\n",
     "Thanks, that works."),
    ("gmail_wrapped", "Thanks.\n\nOn Tue, 1 Dec 2026 at 10:00, Customer Support Team of ACME <support@example.com>\n"
     "wrote:\n> Hello\n", "Thanks."),
    ("apple_de", "Danke!\n\nAm 01.12.2026 um 10:00 schrieb Support <s@x.com>:\n> Hallo\n", "Danke!"),
    ("thunderbird_de", "Passt.\n\nAm 30.11.26 um 09:00 schrieb Shop Support:\n> Logs?\n", "Passt."),
    ("fr", "Merci\n\nLe mar. 1 déc. 2026 à 10:00, Support <s@x.com> a écrit :\n> Bonjour\n", "Merci"),
    ("it", "Grazie\n\nIl giorno mar 1 dic 2026 alle ore 10:00 Support <s@x.com> ha scritto:\n> Ciao\n", "Grazie"),
    ("outlook_en", "Ok see below\n\n________________________________\nFrom: Support <s@x.com>\n"
     "Sent: Tuesday, December 1, 2026 10:00 AM\nTo: Me\nSubject: Re: hi\n\nHello there\n", "Ok see below"),
    ("outlook_de", "Ja\n\nVon: Support <s@x.com>\nGesendet: Dienstag, 1. Dezember 2026 10:00\nAn: Ich\n"
     "Betreff: AW: hi\n\nHallo\n", "Ja"),
    ("original_message", "Yes\n\n-----Original Message-----\nFrom: a\nSent: b\n\nold\n", "Yes"),
    ("sig_dashes", "Yes please.\n\n-- \nJohn Doe\nACME Inc\n", "Yes please."),
    ("sig_regards_keeps_lists", "Yes please.\n- item one\n- item two\n\nBest regards,\nJohn\n",
     "Yes please.\n- item one\n- item two"),
    ("sent_from_iphone", "Sure\n\nSent from my iPhone\n\n> On 1 Dec 2026, at 10:00, Support <s@x.com> wrote:\n> hi\n", "Sure"),
    ("no_quote_colons_kept", "Note: this is important.\nSee: the doc.\nThat is all\n",
     "Note: this is important.\nSee: the doc.\nThat is all"),
    ("bottom_posted", "On Tue, 1 Dec 2026 at 10:00, Support <s@x.com> wrote:\n> question?\n\nMy answer at the bottom.\n",
     "My answer at the bottom."),
    ("crlf", "Fine\r\n\r\nOn Tue, 1 Dec 2026 at 10:00, Support <s@x.com> wrote:\r\n> q\r\n", "Fine"),
    ("trailing_quote_without_header", "Agreed.\n\n> you said this\n> and this\n", "Agreed."),
    ("empty", "", ""),
]


# Gmail's quote headers in languages the library's patterns miss: found by the line that ends in a
# colon, names a date or an address, and has a '>' quote under it.
GMAIL_HEADERS = {
    "es": "El mar, 1 dic 2026 a las 10:00, Soporte (<s@x.com>) escribió:",
    "nl": "Op di 1 dec. 2026 om 10:00 schreef Support <s@x.com>:",
    "pt": "Em ter., 1 de dez. de 2026 às 10:00, Suporte <s@x.com> escreveu:",
    "pl": "wt., 1 gru 2026 o 10:00 Support <s@x.com> napisał(a):",
    "zh": "Support <s@x.com> 于2026年12月1日周二 10:00写道：",
    "ru": "вт, 1 дек. 2026 г. в 10:00, Support <s@x.com>:",
}
CASES += [(f"gmail_{lang}", f"Reply text\n\n{header}\n\n> quoted one\n> quoted two\n", "Reply text")
          for lang, header in GMAIL_HEADERS.items()]
CASES += [
    ("colon_line_without_quote_is_text", "Call me at 10:30:\n0171 123456\n", "Call me at 10:30:\n0171 123456"),
    ("inline_answer_after_plain_colon", "As you asked:\n> can you?\nYes I can.\n", "As you asked:\n> can you?\nYes I can."),
]


@pytest.mark.parametrize("name, text, reply", CASES, ids=[c[0] for c in CASES])
def test_stripped_reply(name, text, reply):
    assert stripped_reply(text) == reply


# Where we answer differently from the library on purpose: it keeps a trailing quote that has no
# header, returns the quote above a bottom-posted answer, and misses the headers above.
OURS = ("trailing_quote_without_header", "bottom_posted", *(f"gmail_{lang}" for lang in GMAIL_HEADERS))


@pytest.mark.parametrize("name, text, reply", [c for c in CASES if c[0] not in OURS],
                         ids=[c[0] for c in CASES if c[0] not in OURS])
def test_same_answer_as_the_library_where_it_is_fast_enough_to_ask(name, text, reply):
    # Our scan only decides where the library's own patterns are tried: for the rest, the library's
    # own (slow) reading gives the same reply.
    m = EmailMessage(text=text, languages=list(LANGUAGES), keep_hyphen_lists=True).read()
    assert (m.replies[0].body if m.replies else "") == reply


def test_html_only_reply_uses_the_blockquote():
    html = ('<div dir="ltr">Works now<br></div><br><div class="gmail_quote"><div class="gmail_attr">On Tue, 1 Dec 2026'
            ' at 10:00, Support &lt;s@x.com&gt; wrote:<br></div><blockquote class="gmail_quote"><p>Try again</p>'
            '</blockquote></div>')
    assert stripped_reply("", html) == "Works now"
    assert "> Try again" in html_text(html)


def test_html_text_skips_styles_and_scripts():
    assert html_text("<style>p{color:red}</style><script>x()</script><p>Hello</p><p>World &amp; more</p>") == \
        "Hello\n\nWorld & more"


@pytest.mark.parametrize("html", ["<style " * 50_000, "<a " * 50_000, "<p>x</p>" + "<div" * 50_000])
def test_html_without_closing_brackets_is_linear(html):
    start = time.process_time()
    html_text(html)
    assert time.process_time() - start < 0.5


@pytest.mark.parametrize("text", ["On " + "x " * 5000 + ":\n> q\n", ("On " + "x " * 120 + ":\n") * 500,
                                  ("Le " + "x " * 120 + "a écrit :\n") * 500])
def test_lines_that_make_the_librarys_patterns_quadratic_are_bounded(text):
    start = time.process_time()
    stripped_reply(text)
    assert time.process_time() - start < 1.0


def test_a_50_kb_body_is_stripped_quickly():
    paragraph = "Thanks for the quick answer, this is a long paragraph of text that goes on and on.\n" * 6 + "\n"
    body = paragraph * 95 + "On Tue, 1 Dec 2026 at 10:00, Support <s@x.com> wrote:\n" + "> quoted\n" * 200
    start = time.process_time()
    reply = stripped_reply(body)
    elapsed = time.process_time() - start
    assert reply.endswith("goes on and on.") and "quoted" not in reply
    assert elapsed < 0.05, elapsed  # the library's own scan takes ~150 ms here (CPU seconds: a loaded machine does not fail it)


# The signature and disclaimer searches take cheap paths (reply.py _search_at_lines, the "mail"
# prefilter) that must find exactly what the library's patterns find searched everywhere.
FRAGMENTS = ["Hello, about my order.", "Thanks,", "Best regards,", "-- ", "--", "Sent from my iPhone", "John", "/jd",
             "_" * 40, "Disclaimer: this e-mail is confidential", "CAUTION: external email", "Warning: not mail",
             "Gesendet von meinem Telefon", "Mit freundlichen Grüßen", "> quoted", "Note: see below", "Tak", "Kh", "x.y!",
             # for the line-head prefilter (reply._LineFirst): case, folding outside ASCII, near misses, CJK
             "SENT FROM MY PHONE", "\u017fent from my phone", "\u212ah", "KH", "Hello, about my order.", "Hälsningar",
             "Hent Outlook til", "Hen", ">> Best regards", "> -- ", "谢谢，", "내 폰에서 보냄", "/x", "Dank u,", "Thanks", "\u00e9"]
SPACES = ["\n", "\n\n", " \n", "\n ", "\t\n\n", "\u00a0\n", "\u2028", " ", "\r\n", "\n\u3000\n", ""]


def test_the_cheap_signature_and_disclaimer_searches_find_what_the_full_searches_find():
    import random

    from gateway.inbound import reply

    p = reply._compiled(LANGUAGES)
    assert p.signature_at_lines and p.needs_mail   # the library's patterns still have the shape relied on
    assert p.signature_first is not None           # and the line-head prefilter understood it
    rng = random.Random(8)
    for _ in range(3000):
        text = "".join(rng.choice(FRAGMENTS) + rng.choice(SPACES) for _ in range(rng.randint(0, 12)))
        for start in {0, 1, len(text) // 2, max(len(text) - 7, 0)}:
            start = min(start, len(text))
            full = p.signature.search(text, start)
            for cheap in (reply._search_at_lines(p.signature, text, start),
                          reply._search_at_lines(p.signature, text, start, p.signature_first)):
                assert (full.span() if full else None) == (cheap.span() if cheap else None), (text, start)
            if not reply._MAIL.search(text, start):
                assert p.disclaimers.findall(text, start) == [], (text, start)


def test_the_quote_header_candidates_are_the_lines_the_pattern_finds():
    import random

    from gateway.inbound import reply

    rng = random.Random(9)
    pieces = ["a", ":", "\uff1a", "-----", "--", "> ", ">", "_____", "-_-_-", " ", "\n", "\n\n", "x: y", "On Mon wrote:"]
    for _ in range(5000):
        text = reply._normalise("".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))))
        assert list(reply._candidates(text)) == [m.span() for m in reply._CANDIDATE.finditer(text)], text
