"""SMTP delivery of a pipelined group (one round trip a message): every message once,
refusals reported per message, transient ones retried alone."""

from __future__ import annotations

from collections import Counter

from campaigns import deliver
from harness.smtp_sink import SmtpSink, StoringHandler, free_port, read_index


def _messages(n: int, bad: set[int] = frozenset()) -> list[deliver.OutgoingMessage]:
    out = []
    for i in range(n):
        mid = f"<pipelined-{i}@shop.example>"
        data = (
            f"From: a@shop.example\r\nTo: c{i}@example.test\r\nSubject: s{i}\r\nMessage-ID: {mid}\r\n\r\n"
            f".leading dot line {i}\r\nbody\r\n"
        ).encode()
        rcpt = f"refuse{i}@example.test" if i in bad else f"c{i}@example.test"
        out.append(deliver.OutgoingMessage(mid, "a@shop.example", rcpt, data))
    return out


class _Refusing(StoringHandler):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.startswith("refuse"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_group_with_random_4xx_arrives_exactly_once(tmp_path):
    port = free_port()
    with SmtpSink(tmp_path / "out", port, fail_rate=0.4, seed=3) as sink:
        adapter = deliver.SmtpAdapter(deliver.SmtpSettings(port=port), retries=20, backoff_s=0.001)
        results = adapter.send_many(_messages(60))
        adapter.close()
        assert sink.handler.rejected > 0
    assert results == [None] * 60
    seen = Counter(m["message_id"] for m in read_index(tmp_path / "out"))
    assert len(seen) == 60 and max(seen.values()) == 1
    # dot-stuffing survived the pipelined DATA
    stored = sorted((tmp_path / "out").glob("*.eml"))[0].read_bytes()
    assert b"\r\n.leading dot line" in stored


def test_refused_recipient_is_permanent_and_the_rest_go_through(tmp_path):
    port = free_port()
    sink = SmtpSink(tmp_path / "out", port)
    sink.controller.handler = sink.handler = _Refusing(tmp_path / "out")
    with sink:
        adapter = deliver.SmtpAdapter(deliver.SmtpSettings(port=port))
        results = adapter.send_many(_messages(10, bad={0, 4, 9}))
        adapter.close()
    assert [i for i, r in enumerate(results) if r is not None] == [0, 4, 9]
    assert all(isinstance(results[i], deliver.PermanentDeliveryError) for i in (0, 4, 9))
    assert len(read_index(tmp_path / "out")) == 7


def test_relay_down_reports_first_failure_then_not_attempted():
    adapter = deliver.SmtpAdapter(
        deliver.SmtpSettings(port=free_port(), timeout=1), retries=1, backoff_s=0.001
    )
    results = adapter.send_many(_messages(4))
    assert isinstance(results[0], deliver.TransientDeliveryError)
    assert not isinstance(results[0], deliver.NotAttempted)
    assert all(isinstance(r, deliver.NotAttempted) for r in results[1:])
