"""Delivery: build the MIME message and hand it to an adapter (SMTP, or an ESP API).

The SMTP adapter reads its relay from an Airflow connection (CAMPAIGNS_SMTP_CONN_ID,
default `smtp_campaigns`; e.g. AIRFLOW_CONN_SMTP_CAMPAIGNS='smtp://127.0.0.1:8025'),
keeps one connection open for a whole batch and retries transient failures
(4xx replies, dropped connections) with exponential backoff and jitter,
reconnecting as needed. Without a connection it uses the local sink.

Only a refusal of one recipient (5xx to its RCPT TO or DATA) fails a message for
good. A relay that refuses us (a failed login, a refused MAIL FROM, TLS that does
not verify, no connection at all) is an outage: `RelayError`, after which the
engine keeps the messages due without counting the attempt. TLS verifies the
relay's certificate and host name (`ssl.create_default_context()`: the system's
CAs, or the bundle SSL_CERT_FILE names), and a login is never sent without TLS.
Error texts never carry an email address (relays echo the recipient's).

An ESP adapter implements `DeliveryAdapter.send` and passes `message_id` as the
provider's idempotency key, so an in-doubt resend is deduplicated there.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import os
import random
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.header import Header
from email.utils import formatdate
from typing import Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from campaigns import config

T = TypeVar("T")

log = logging.getLogger(__name__)


# an address, bare or quoted, in a relay's reply (`550 5.1.1 <bob@example.com>: user unknown`)
_NOT_IN_ADDRESS = r"""\s<>()\[\]'",;:"""
_ADDRESS = re.compile(rf'(?:"[^"]*"|[^{_NOT_IN_ADDRESS}]+)@[^{_NOT_IN_ADDRESS}]+')


def redact(text: str) -> str:
    """`text` with every email address replaced: for error columns, decision details and logs."""
    return _ADDRESS.sub("[address]", text)


class DeliveryError(Exception):
    """Its message never names an address (see `redact`), wherever it is raised."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class TransientDeliveryError(DeliveryError):
    """Worth retrying later (4xx, connection trouble)."""


class PermanentDeliveryError(DeliveryError):
    """Will fail again (5xx): record as failed."""


class NotAttempted(TransientDeliveryError):
    """An earlier message of the group kept failing (relay down): this one was not handed over."""


class RelayError(TransientDeliveryError):
    """The relay refused us, not a message (a failed login, a refused MAIL FROM, TLS that
    does not verify, no connection): an outage, no message's fault. `temporary` (4xx,
    network trouble) is worth the adapter's quick retries; the rest is not (retrying a
    refused login only risks a lockout)."""

    def __init__(self, message: str, *, temporary: bool):
        super().__init__(message)
        self.temporary = temporary


@dataclass
class OutgoingMessage:
    message_id: str
    sender: str
    recipient: str
    data: bytes


class DeliveryAdapter(Protocol):
    def send(self, message: OutgoingMessage) -> None: ...

    def close(self) -> None: ...


def send_group(adapter: DeliveryAdapter, messages: list[OutgoingMessage]) -> list[DeliveryError | None]:
    """Hand a group to the adapter: per message None (accepted) or the error.

    Uses the adapter's `send_many` when it has one (SMTP pipelining across
    messages); otherwise sends one by one. Either way, once a message fails
    transiently after the adapter's retries, the messages after it that had not
    been accepted get `NotAttempted`."""
    many = getattr(adapter, "send_many", None)
    if many is not None:
        return many(messages)
    return _send_in_turn(adapter.send, messages)


def _send_in_turn(send: Callable[[T], None], items: list[T]) -> list[DeliveryError | None]:
    """`send` each item in turn: None (accepted) or its error; once one fails transiently
    (its retries spent), the items after it are NotAttempted."""
    out: list[DeliveryError | None] = []
    failure: TransientDeliveryError | None = None
    for item in items:
        if failure is not None:
            out.append(NotAttempted(f"not attempted: {failure}"))
            continue
        try:
            send(item)
            out.append(None)
        except TransientDeliveryError as exc:
            failure = exc
            out.append(exc)
        except PermanentDeliveryError as exc:
            out.append(exc)
    return out


def _header_text(value: str) -> str:
    """A header value safe on one line: ASCII as is, else RFC 2047 encoded words."""
    value = " ".join(value.split())  # no CR/LF: no header injection
    if value.isascii():
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def _b64(text: str) -> bytes:
    """base64 body in 76-character CRLF lines (for HTML: 2-3 times cheaper than QP here)."""
    enc = binascii.b2a_base64(text.encode("utf-8"), newline=False)
    return b"\r\n".join([enc[i : i + 76] for i in range(0, len(enc), 76)]) + b"\r\n"


def _html_7bit(html: str, limit: int = 990) -> bytes | None:
    """The HTML as 7bit lines of at most `limit` characters, or None if it cannot be.

    Non-ASCII becomes numeric character references (valid HTML), and long lines
    are broken where a space separates two attributes inside a tag (`" `), which
    is whitespace-equivalent. Compared with base64 this keeps the source readable
    and costs the receiving MTA a tenth of the lines."""
    text = html if html.isascii() else html.encode("ascii", "xmlcharrefreplace").decode("ascii")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    out: list[str] = []
    for line in text.split("\n"):
        pos, end = 0, len(line)
        while end - pos > limit:
            cut = line.rfind('" ', pos, pos + limit)
            if cut < 0:
                return None
            out.append(line[pos : cut + 1])
            pos = cut + 2
        out.append(line[pos:] if pos else line)
    out.append("")
    return "\r\n".join(out).encode("ascii")


def _qp(text: str) -> bytes:
    """quoted-printable body with CRLF line endings (binascii is C-fast)."""
    data = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"), istext=True)
    return data.replace(b"\n", b"\r\n")


def build_message(
    *,
    sender: str,
    recipient: str,
    reply_to: str | None,
    message_id: str,
    subject: str,
    html: str,
    text: str,
    list_unsubscribe_url: str,
    list_unsubscribe_mailto: str | None,
    headers: dict[str, str] | None = None,
    date: float | None = None,
) -> bytes:
    """RFC 5322 bytes, multipart/alternative (text, html), CRLF line endings throughout.

    Assembled directly rather than through email.message.EmailMessage, whose header
    registry costs about 1 ms a message; the result parses identically (see
    tests/unit/test_deliver_message.py)."""
    if any(c in recipient for c in '\r\n <>"') or "@" not in recipient:
        raise PermanentDeliveryError(
            "refusing a malformed recipient address (a CR, LF, space, <, > or quote in it, or no at sign)"
        )
    boundary = "=_emailp_" + hashlib.sha256(message_id.encode()).hexdigest()[:24]
    targets = [f"<{list_unsubscribe_url}>"]
    if list_unsubscribe_mailto:
        targets.append(f"<{list_unsubscribe_mailto}>")
    lines = [
        f"From: {_header_text(sender)}",
        f"To: {recipient}",
    ]
    if reply_to:
        lines.append(f"Reply-To: {_header_text(reply_to)}")
    lines += [
        f"Subject: {_header_text(subject)}",
        f"Date: {formatdate(date, usegmt=True)}",
        f"Message-ID: {message_id}",
        f"List-Unsubscribe: {', '.join(targets)}",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    ]
    lines += [f"{k}: {_header_text(v)}" for k, v in (headers or {}).items()]
    lines += [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
        "",
        "",
    ]
    head = "\r\n".join(lines).encode()
    html_body = _html_7bit(html)
    html_head = (
        f'\r\n--{boundary}\r\nContent-Type: text/html; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {'7bit' if html_body is not None else 'base64'}\r\n\r\n"
    ).encode()
    if html_body is None:
        html_body = _b64(html)
    return b"".join((head, _qp(text), html_head, html_body, f"--{boundary}--\r\n".encode()))


@dataclass
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 8025
    login: str | None = None
    password: str | None = None
    starttls: bool = False
    ssl: bool = False
    timeout: float = 30.0


def _from_uri(uri: str) -> SmtpSettings:
    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    flag = lambda name: query.get(name, "").lower() in ("1", "true", "yes")  # noqa: E731
    return SmtpSettings(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 25,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        starttls=flag("starttls"),
        ssl=flag("ssl") or parts.scheme == "smtps",
        timeout=float(query.get("timeout", 30)),
    )


def smtp_settings(conn_id: str | None = None) -> SmtpSettings:
    """The relay of Airflow connection `conn_id` (env var or metastore), else the local sink."""
    conn_id = conn_id or config.smtp_conn_id()
    uri = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if uri and not uri.lstrip().startswith("{"):
        return _from_uri(uri)
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson or {}
        return SmtpSettings(
            host=conn.host or "127.0.0.1",
            port=conn.port or 25,
            login=conn.login or None,
            password=conn.password or None,
            starttls=not extra.get("disable_tls", True) or bool(extra.get("starttls")),
            ssl=not extra.get("disable_ssl", True),
            timeout=float(extra.get("timeout", 30)),
        )
    except Exception as exc:  # noqa: BLE001 - no Airflow context or no such connection
        log.info("no Airflow connection %s (%s); using the local SMTP sink", conn_id, type(exc).__name__)
        return SmtpSettings(port=config.sink_port())


def _dot_quoted(msg: bytes) -> bytes:
    """DATA content: leading dots doubled (bytes.replace, not a regex), CRLF-terminated."""
    q = msg.replace(b"\r\n.", b"\r\n..")
    if q[:1] == b".":
        q = b"." + q
    if q[-2:] != b"\r\n":
        q += b"\r\n"
    return q


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP with RFC 2920 PIPELINING when the server offers it (MAIL, RCPT and
    DATA in one write: two round trips a message instead of four), and a DATA that
    quotes leading dots with bytes.replace rather than a regex over the message."""

    def data(self, msg):  # type: ignore[override]
        self.putcmd("data")
        code, repl = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, repl)
        return self._send_content(msg)

    def _send_content(self, msg: bytes):
        self.send(_dot_quoted(msg) + b".\r\n")
        return self.getreply()

    def send_many_bytes(
        self, envelopes: list[tuple[str, str, bytes]], results: list[tuple[int, bytes] | None]
    ) -> None:
        """Send several messages with one round trip each (RFC 2920).

        The end of one message's DATA travels in the same write as the next
        message's MAIL, RCPT and DATA, so each message costs one round trip
        instead of two. Appends to `results`, per message, None when the relay
        accepted it, else the (code, reply) that refused it; a refused message
        does not stop the ones after it. A dropped connection raises
        (SMTPServerDisconnected, OSError) with `results` holding the messages
        answered so far.
        """
        if self.ehlo_resp is None and self.helo_resp is None:
            self.ehlo_or_helo_if_needed()
        if not self.has_extn("pipelining"):
            for sender, recipient, msg in envelopes:
                try:
                    self.sendmail(sender, [recipient], msg)
                    results.append(None)
                except smtplib.SMTPRecipientsRefused as exc:
                    results.append(next(iter(exc.recipients.values())))
                    self.rset()
                except smtplib.SMTPResponseException as exc:
                    self.rset()
                    if isinstance(exc, smtplib.SMTPSenderRefused) and exc.smtp_code >= 500:
                        raise  # the relay refuses our sender: every message after would fail alike
                    results.append((exc.smtp_code, exc.smtp_error))
            return

        def envelope(i: int) -> bytes:
            sender, recipient, _ = envelopes[i]
            return f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode()

        if not envelopes:
            return
        self.send(envelope(0))
        for i, (_, _, msg) in enumerate(envelopes):
            mail_code, mail_resp = self.getreply()
            rcpt_code, rcpt_resp = self.getreply()
            data_code, data_resp = self.getreply()
            sender_refused = mail_code >= 500  # every message after would fail alike: stop here
            following = envelope(i + 1) if i + 1 < len(envelopes) and not sender_refused else b""
            if data_code == 354 and mail_code == 250 and rcpt_code in (250, 251):
                self.send(_dot_quoted(msg) + b".\r\n" + following)
                code, resp = self.getreply()
                results.append(None if code == 250 else (code, resp))
                continue
            if data_code == 354:  # end the DATA we could not withdraw; the server discards it
                self.send(b".\r\nRSET\r\n" + following)
                self.getreply()
            else:
                self.send(b"RSET\r\n" + following)
            self.getreply()  # RSET
            if sender_refused:
                raise smtplib.SMTPSenderRefused(mail_code, mail_resp, envelopes[i][0])
            if mail_code != 250:
                results.append((mail_code, mail_resp))
            elif rcpt_code not in (250, 251):
                results.append((rcpt_code, rcpt_resp))
            else:
                results.append((data_code, data_resp))

    def send_message_bytes(self, sender: str, recipient: str, msg: bytes) -> None:
        if self.ehlo_resp is None and self.helo_resp is None:
            self.ehlo_or_helo_if_needed()
        if not self.has_extn("pipelining"):
            self.sendmail(sender, [recipient], msg)
            return
        self.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode())
        mail_code, mail_resp = self.getreply()
        rcpt_code, rcpt_resp = self.getreply()
        data_code, data_resp = self.getreply()
        if data_code == 354:
            if mail_code != 250 or rcpt_code not in (250, 251):
                self._send_content(b"")  # end the DATA we could not withdraw; the server discards it
                self.rset()
                if mail_code != 250:
                    raise smtplib.SMTPSenderRefused(mail_code, mail_resp, sender)
                raise smtplib.SMTPRecipientsRefused({recipient: (rcpt_code, rcpt_resp)})
            code, resp = self._send_content(msg)
            if code != 250:
                self.rset()
                raise smtplib.SMTPDataError(code, resp)
            return
        self.rset()
        if mail_code != 250:
            raise smtplib.SMTPSenderRefused(mail_code, mail_resp, sender)
        if rcpt_code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: (rcpt_code, rcpt_resp)})
        raise smtplib.SMTPDataError(data_code, data_resp)


class _SMTPSSL(_SMTP, smtplib.SMTP_SSL):
    """Implicit TLS with the same pipelined sending."""


def _reply(code: int, text: bytes | str) -> str:
    return f"{code} {text.decode('utf-8', 'replace') if isinstance(text, bytes) else text}"


def _refusal(code: int, text: bytes | str) -> DeliveryError:
    """A recipient's RCPT TO or DATA refused: 4xx worth retrying, 5xx permanent for that recipient."""
    cls = TransientDeliveryError if 400 <= code < 500 else PermanentDeliveryError
    return cls(_reply(code, text))


# what a relay's refusal while opening a session (or of MAIL FROM) refused
_REFUSED = (
    (smtplib.SMTPAuthenticationError, "the login"),
    (smtplib.SMTPSenderRefused, "the sender (MAIL FROM)"),
    (smtplib.SMTPResponseException, "the session"),
)


class SmtpAdapter:
    """One SMTP connection reused for every message; reconnects and retries with backoff."""

    def __init__(self, settings: SmtpSettings | None = None, *, retries: int = 4, backoff_s: float = 0.05):
        self.settings = settings or smtp_settings()
        self.retries = retries
        self.backoff_s = backoff_s
        self._client: _SMTP | None = None
        self.connections_opened = 0
        self.transient_failures = 0

    @property
    def relay(self) -> str:
        return f"SMTP relay {self.settings.host}:{self.settings.port}"

    def _session(self) -> _SMTP:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> _SMTP:
        """A new session: connected, TLS verified, logged in; else RelayError."""
        s = self.settings
        if s.login and not (s.ssl or s.starttls):
            raise RelayError(
                f"{self.relay}: refusing to send the login without TLS"
                " (set starttls=true, or use smtps://, in the relay's connection)",
                temporary=False,
            )
        client: _SMTP | None = None
        try:
            if s.ssl:
                client = _SMTPSSL(
                    s.host,
                    s.port,
                    timeout=s.timeout,
                    local_hostname="localhost",
                    context=ssl.create_default_context(),
                )
            else:
                client = _SMTP(s.host, s.port, timeout=s.timeout, local_hostname="localhost")
            # request/response on small segments: without TCP_NODELAY, Nagle and delayed
            # ACKs cost up to 40 ms a message (measured: 97 -> 167 messages/s on one connection)
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.ehlo()
            if s.starttls:
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if s.login:
                client.login(s.login, s.password or "")
        except Exception as exc:
            if client is not None:
                client.close()
            raise self._fault(exc) from exc
        self.connections_opened += 1
        return client

    def _fault(self, exc: Exception) -> RelayError:
        """What opening a session (or a MAIL FROM) failed on, as the operator should read it."""
        if isinstance(exc, smtplib.SMTPResponseException):
            refused = next(what for cls, what in _REFUSED if isinstance(exc, cls))
            what = f"refused {refused}: {_reply(exc.smtp_code, exc.smtp_error)}"
            temporary = exc.smtp_code < 500
        elif isinstance(exc, ssl.SSLError):  # an OSError too, but no network trouble
            what, temporary = f"TLS failed: {exc}", False
        elif isinstance(exc, smtplib.SMTPServerDisconnected) or (
            isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)
        ):
            what, temporary = f"unreachable: {type(exc).__name__}: {exc}", True
        else:  # SMTPNotSupportedError (no STARTTLS or AUTH offered) and the like
            what, temporary = f"{type(exc).__name__}: {exc}", False
        return RelayError(f"{self.relay} {what}", temporary=temporary)

    def send(self, message: OutgoingMessage) -> None:
        attempt = 0
        while True:
            try:
                self._session().send_message_bytes(message.sender, message.recipient, message.data)
                return
            except RelayError as exc:
                error: DeliveryError = exc
            except smtplib.SMTPRecipientsRefused as exc:
                error = _refusal(*next(iter(exc.recipients.values())))
            except smtplib.SMTPSenderRefused as exc:
                error = self._fault(exc)
            except smtplib.SMTPResponseException as exc:
                error = _refusal(exc.smtp_code, exc.smtp_error)
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self._drop()
                error = TransientDeliveryError(f"{type(exc).__name__}: {exc}")
            if isinstance(error, PermanentDeliveryError) or (
                isinstance(error, RelayError) and not error.temporary
            ):
                self._reset()
                raise error
            self.transient_failures += 1
            attempt += 1
            if attempt > self.retries:
                raise error
            self._reset()
            time.sleep(self.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random()))

    def send_many(self, messages: list[OutgoingMessage]) -> list[DeliveryError | None]:
        """The group pipelined on the connection (one round trip a message); a message the
        relay refused with 4xx, or left unanswered when the connection dropped, is then
        sent again alone through `send` (reconnect, backoff). After one fails for good,
        the remaining unaccepted ones get NotAttempted. A relay that refuses us for good
        (login, TLS, sender) fails the first unaccepted message with its RelayError at
        once, and the rest are NotAttempted: alone they would fail alike."""
        replies: list[tuple[int, bytes] | None] = []
        fault: RelayError | None = None
        try:
            self._session().send_many_bytes([(m.sender, m.recipient, m.data) for m in messages], replies)
        except RelayError as exc:
            fault = exc
        except smtplib.SMTPSenderRefused as exc:  # 5xx: send_many_bytes answers a 4xx per message
            fault = self._fault(exc)
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as exc:
            log.info(
                "pipelined group interrupted after %d of %d: %s",
                len(replies),
                len(messages),
                redact(str(exc)),
            )
            self._drop()
        out: list[DeliveryError | None] = []
        again: list[tuple[int, int, OutgoingMessage]] = []  # (index, 4xx code or 0 if unanswered, message)
        for i, m in enumerate(messages):
            reply = replies[i] if i < len(replies) else (0, b"unanswered")
            if reply is None:
                out.append(None)
            elif reply[0] >= 500:
                out.append(PermanentDeliveryError(_reply(*reply)))
            else:
                out.append(None)  # replaced below
                again.append((i, reply[0], m))
        if fault is not None and not fault.temporary:
            for n, (i, _, _) in enumerate(again):
                out[i] = fault if n == 0 else NotAttempted(f"not attempted: {fault}")
            return out

        def resend(item: tuple[int, int, OutgoingMessage]) -> None:
            if item[1]:
                self.transient_failures += 1
            self.send(item[2])  # retries with backoff, reconnecting as needed

        for (i, _, _), result in zip(again, _send_in_turn(resend, again), strict=True):
            out[i] = result
        return out

    def _reset(self) -> None:
        if self._client is not None:
            try:
                self._client.rset()
            except Exception:  # noqa: BLE001
                self._drop()

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
        self._client = None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.quit()
            except Exception:  # noqa: BLE001
                pass
        self._client = None
