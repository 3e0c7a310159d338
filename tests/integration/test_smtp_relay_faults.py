"""A relay that refuses us is an outage, not a failure of every message; TLS verifies
the relay; a login never goes out in clear; no recipient address in errors or logs.

Against real SMTP servers: the project's sink (aiosmtpd) with STARTTLS or implicit
TLS on a certificate from a throwaway CA (trustme), a login it checks, and handlers
that refuse the sender or echo the recipient's address in their refusals.
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import trustme
from aiosmtpd.smtp import AuthResult

from campaigns import deliver, timers
from campaigns.engine import DeliveryUnavailable, Engine
from campaigns.schema import load_campaigns, load_policy
from harness import fixtures
from harness.smtp_sink import SmtpSink, StoringHandler, free_port, read_index

pytestmark = pytest.mark.integration

LOGIN, PASSWORD = "mailer", "s3cret"
CAMPAIGNS = load_campaigns()
MAX_ATTEMPTS = load_policy().max_send_attempts


class Logins:
    """aiosmtpd authenticator: accepts LOGIN/PASSWORD, counts the sessions that tried."""

    def __init__(self, password: str = PASSWORD):
        self.password = password
        self.sessions: set[int] = set()

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self.sessions.add(id(session))
        ok = (auth_data.login, auth_data.password) == (LOGIN.encode(), self.password.encode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


class RefusingSender(StoringHandler):
    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        return f"550 5.7.1 <{address}>: Sender address rejected: not owned by user"


class EchoingRefusals(StoringHandler):
    """Refuses customers whose id ends in 1 at RCPT TO and those ending in 2 at DATA,
    naming the address in the reply, as real relays do."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.split("@")[0].endswith("1"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        (rcpt,) = envelope.rcpt_tos
        if rcpt.split("@")[0].endswith("2"):
            return f"554 5.7.1 <{rcpt}>: message refused, mailbox {rcpt} is disabled"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """A CA the client trusts only when SSL_CERT_FILE names it, and the relay's certificate."""
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server)
    return {"pem": str(path), "server_context": server}


@pytest.fixture
def trusted(ca, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", ca["pem"])


@pytest.fixture
def untrusted(monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)


def tls_relay(tmp_path, ca, logins: Logins, *, implicit: bool = False) -> SmtpSink:
    """A sink that wants TLS (STARTTLS, or implicit) and a login, on a free port."""
    tls = {"tls_context": ca["server_context"]}
    if implicit:  # aiosmtpd offers AUTH under implicit TLS only when told not to require STARTTLS
        tls = {"ssl_context": ca["server_context"], "auth_require_tls": False}
    return SmtpSink(tmp_path / "out", free_port(), authenticator=logins, **tls)


def login_settings(sink: SmtpSink, *, implicit: bool = False) -> deliver.SmtpSettings:
    return deliver.SmtpSettings(
        port=sink.port, login=LOGIN, password=PASSWORD, starttls=not implicit, ssl=implicit, timeout=5
    )


def messages(n: int) -> list[deliver.OutgoingMessage]:
    return [
        deliver.OutgoingMessage(
            f"<m{i}@shop.example>",
            "hello@shop.example",
            f"c{i}@example.test",
            f"Subject: s{i}\r\nMessage-ID: <m{i}@shop.example>\r\n\r\nbody {i}\r\n".encode(),
        )
        for i in range(n)
    ]


def assert_outage(results: list, *words: str) -> deliver.RelayError:
    """The first message carries the relay's fault, the rest were not handed over."""
    first, rest = results[0], results[1:]
    assert isinstance(first, deliver.RelayError) and not first.temporary, results
    assert all(isinstance(r, deliver.NotAttempted) for r in rest), results
    for word in words:
        assert word in str(first), str(first)
    return first


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_verified_tls_and_login_deliver(tmp_path, ca, trusted, implicit):
    logins = Logins()
    with tls_relay(tmp_path, ca, logins, implicit=implicit) as relay:
        adapter = deliver.SmtpAdapter(login_settings(relay, implicit=implicit))
        assert adapter.send_many(messages(3)) == [None] * 3
        adapter.close()
    assert len(read_index(tmp_path / "out")) == 3 and len(logins.sessions) == 1


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_a_certificate_the_client_does_not_trust_is_refused_before_the_login(
    tmp_path, ca, untrusted, implicit
):
    logins = Logins()
    with tls_relay(tmp_path, ca, logins, implicit=implicit) as relay:
        adapter = deliver.SmtpAdapter(login_settings(relay, implicit=implicit), backoff_s=0.001)
        assert_outage(adapter.send_many(messages(3)), "certificate verify failed")
    assert logins.sessions == set() and read_index(tmp_path / "out") == []


def test_a_login_is_never_sent_without_tls(tmp_path):
    logins = Logins()
    # this relay would take the login in clear text
    with SmtpSink(tmp_path / "out", free_port(), authenticator=logins, auth_require_tls=False) as relay:
        settings = deliver.SmtpSettings(port=relay.port, login=LOGIN, password=PASSWORD, timeout=5)
        adapter = deliver.SmtpAdapter(settings)
        assert_outage(adapter.send_many(messages(2)), "without TLS", "starttls=true")
        with pytest.raises(deliver.RelayError, match="without TLS"):
            adapter.send(messages(1)[0])
    assert logins.sessions == set() and adapter.connections_opened == 0


def test_a_refused_login_is_an_outage_tried_once(tmp_path, ca, trusted):
    logins = Logins(password="rotated")
    with tls_relay(tmp_path, ca, logins) as relay:
        adapter = deliver.SmtpAdapter(login_settings(relay), backoff_s=0.001)
        assert_outage(adapter.send_many(messages(4)), "refused the login", "535", f"127.0.0.1:{relay.port}")
        assert len(logins.sessions) == 1  # no reconnect-and-retry of a refused login
        logins.password = PASSWORD  # the relay's password is fixed: the next group goes out
        assert adapter.send_many(messages(4)) == [None] * 4


def test_a_refused_sender_is_an_outage_and_names_no_address(tmp_path):
    with SmtpSink(tmp_path / "out", free_port(), handler_class=RefusingSender) as relay:
        adapter = deliver.SmtpAdapter(deliver.SmtpSettings(port=relay.port, timeout=5), backoff_s=0.001)
        fault = assert_outage(adapter.send_many(messages(3)), "MAIL FROM", "550")
        with pytest.raises(deliver.RelayError, match="MAIL FROM") as single:
            adapter.send(messages(1)[0])
        adapter.close()
    for text in (str(fault), str(single.value)):
        assert "@" not in text and "[address]" in text
    assert read_index(tmp_path / "out") == []


# -- the engine --------------------------------------------------------------------------------

CART = CAMPAIGNS["cart_abandonment"]


@pytest.fixture
def db(warehouse_conn):
    warehouse_conn.execute(
        "truncate ops.campaign_triggers, ops.send_ledger, ops.decision_log, ops.suppressions, ops.consent,"
        " ops.experiment_assignments, ops.campaign_cursors, raw.events, raw.shop_customers, raw.shop_products"
    )
    fixtures.insert_products(warehouse_conn)
    return warehouse_conn


def abandoned_carts(conn, ids: list[int]) -> None:
    fixtures.insert_customers(conn, ids, timezone=fixtures.daytime_timezone())
    at = datetime.now(UTC) - timedelta(minutes=31)
    fixtures.insert_events(conn, [fixtures.cart_event(i, at) for i in ids])
    timers.ingest(conn, CAMPAIGNS)


def test_engine_keeps_messages_due_through_a_relay_outage_and_logs_one_error(
    db, tmp_path, ca, trusted, caplog
):
    ids = fixtures.treated_customers(CART, 6, 3000)
    abandoned_carts(db, ids)
    logins = Logins(password="rotated")  # the relay's password changed, ours did not
    clock = [datetime.now(UTC)]
    with tls_relay(tmp_path, ca, logins) as relay:

        def run() -> None:
            engine = Engine(
                campaigns=CAMPAIGNS,
                clock=lambda: clock[0],
                senders=2,
                adapter_factory=lambda: deliver.SmtpAdapter(login_settings(relay), backoff_s=0.001),
            )
            engine.run()

        with caplog.at_level(logging.ERROR, logger="campaigns.engine"), pytest.raises(DeliveryUnavailable):
            run()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "relay outage" in errors[0] and "535" in errors[0], errors
        assert "6 messages stay due" in errors[0]
        due = db.execute("select status, due_at - %s from ops.campaign_triggers", (clock[0],)).fetchall()
        assert {s for s, _ in due} == {"pending"}
        assert all(timedelta(seconds=29) <= wait <= timedelta(seconds=31) for _, wait in due), due

        # more outages than max_send_attempts: still due, no attempt counted, nothing failed.
        # An hour a run: past the longest backoff, and short of the customers' quiet hours
        # (it is 13:xx there; each retry is decided again, quiet hours included)
        for _ in range(MAX_ATTEMPTS + 1):
            clock[0] += timedelta(hours=1)
            with pytest.raises(DeliveryUnavailable):
                run()
        assert db.execute("select distinct status from ops.campaign_triggers").fetchall() == [("pending",)]
        assert db.execute("select distinct state, attempts from ops.send_ledger").fetchall() == [
            ("failed", 0)
        ]
        outcomes = Counter(r for (r,) in db.execute("select outcome from ops.decision_log"))
        assert set(outcomes) == {"retry"}
        assert db.execute(
            "select bool_and((detail ->> 'relay_outage')::bool) from ops.decision_log"
        ).fetchone()[0]

        logins.password = PASSWORD  # the operator updates the relay's password
        clock[0] += timedelta(hours=1)
        run()
    per_id = Counter(m["message_id"] for m in read_index(tmp_path / "out"))
    assert len(per_id) == 6 and max(per_id.values()) == 1
    assert db.execute("select distinct state, attempts from ops.send_ledger").fetchall() == [("sent", 1)]


def test_refusals_that_echo_the_address_leave_it_nowhere(db, tmp_path, caplog):
    ids = fixtures.treated_customers(CART, 30, 4000)
    abandoned_carts(db, ids)
    refused = {i for i in ids if str(i)[-1] in "12"}
    assert refused and len(refused) < len(ids)
    caplog.set_level(logging.DEBUG)
    with SmtpSink(tmp_path / "out", free_port(), handler_class=EchoingRefusals) as relay:
        engine = Engine(
            campaigns=CAMPAIGNS,
            senders=2,
            adapter_factory=lambda: deliver.SmtpAdapter(deliver.SmtpSettings(port=relay.port, timeout=5)),
        )
        stats = engine.run().as_dict()
    assert stats["sent"] == len(ids) - len(refused)
    failed = dict(db.execute("select customer_id, last_error from ops.send_ledger where state = 'failed'"))
    assert set(failed) == refused
    assert all(e.startswith(("550 5.1.1 <[address]>", "554 5.7.1 <[address]>")) for e in failed.values()), (
        failed
    )
    details = [d for (d,) in db.execute("select detail::text from ops.decision_log where outcome = 'failed'")]
    assert len(details) == len(refused)
    texts = {
        "ops.send_ledger.last_error": "\n".join(failed.values()),
        "ops.decision_log.detail": "\n".join(details),
        # the sink is the relay, in this process for the test: its own log (mail.log) is not ours
        "the log": "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail.log")),
    }
    for where, text in texts.items():
        assert "@example.test" not in text, f"an address in {where}"
