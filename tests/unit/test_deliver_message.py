"""The MIME message: RFC 8058 headers, CRLF everywhere, both parts decodable, no header injection."""

from __future__ import annotations

import email
import email.policy

import pytest

from campaigns import deliver


def build(**kw):
    args = dict(
        sender="Emailp Shop <hello@shop.example>",
        recipient="ana@example.test",
        reply_to="support@shop.example",
        message_id="<abc@shop.example>",
        subject="Votre panier, Zoë",
        html="<p>Hello Zoë</p>\n" + "<div>x</div>" * 500,
        text="Hello Zoë\n.line starting with a dot\n",
        list_unsubscribe_url="https://shop.example/unsubscribe?token=t.sig",
        list_unsubscribe_mailto="mailto:unsubscribe@shop.example?subject=unsubscribe",
    )
    args.update(kw)
    return deliver.build_message(**args)


def test_message_parses_with_all_headers_and_parts():
    data = build()
    assert b"\n" not in data.replace(b"\r\n", b"")  # no bare LF: aiosmtpd rejects those
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Subject"] == "Votre panier, Zoë"
    assert msg["Message-ID"] == "<abc@shop.example>"
    assert msg["List-Unsubscribe"] == (
        "<https://shop.example/unsubscribe?token=t.sig>, <mailto:unsubscribe@shop.example?subject=unsubscribe>"
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (
        msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        == "Hello Zoë\n.line starting with a dot\n"
    )
    assert msg.get_body(("html",)).get_content().startswith("<p>Hello Zoë</p>")


def test_no_header_injection():
    msg = email.message_from_bytes(
        build(subject="Hi\r\nBcc: victim@example.test"), policy=email.policy.default
    )
    assert msg["Bcc"] is None and msg["Subject"] == "Hi Bcc: victim@example.test"
    with pytest.raises(deliver.PermanentDeliveryError) as refused:
        build(recipient="a@b.c\r\nBcc: x@y.z")
    assert "@" not in str(refused.value)  # the error names no address


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.1.1 <bob.smith+tag@mail.example.co.uk>: Recipient address rejected: User unknown",
        "{'bob@example.test': (550, b'5.1.1 <bob@example.test>... User unknown')}",
        'RCPT TO:bob@example.test refused; "bob smith"@example.test too',
        "554 mailbox élève@école.example disabled",
    ],
)
def test_delivery_errors_name_no_address(reply):
    for error in (deliver.PermanentDeliveryError(reply), deliver.RelayError(reply, temporary=False)):
        assert "@" not in str(error) and "[address]" in str(error)
    assert deliver.redact("421 4.3.0 try again later") == "421 4.3.0 try again later"


def test_smtp_settings_from_airflow_connection_uri(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_TEST", "smtp://user:p%40ss@relay.internal:2525?starttls=true&timeout=5"
    )
    s = deliver.smtp_settings("smtp_test")
    assert (s.host, s.port, s.login, s.password, s.starttls, s.timeout) == (
        "relay.internal",
        2525,
        "user",
        "p@ss",
        True,
        5.0,
    )


def test_rendered_html_goes_as_readable_7bit_lines():
    from campaigns import preview, render
    from campaigns.schema import load_campaigns

    campaigns = load_campaigns()
    cart = campaigns["cart_abandonment"]
    html = (
        render.Renderer(campaigns)
        .render(
            "cart_abandonment",
            "reminder",
            render.make_context(
                campaign=cart,
                customer={"customer_id": 1, "first_name": "Zoë"},
                payload=preview.sample_payload(),
                unsubscribe_url="https://shop.example/unsubscribe?token=t",
            ),
        )
        .html
    )
    data = build(html=html)
    assert b"Content-Transfer-Encoding: 7bit" in data
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    got = email.message_from_bytes(data, policy=email.policy.default).get_body(("html",)).get_content()
    # only whitespace between attributes and character references differ
    assert " ".join(got.replace("&#235;", "ë").split()) == " ".join(html.split())
