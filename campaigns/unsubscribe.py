"""One-click unsubscribe (RFC 8058): signed tokens and the suppression they record.

Every email carries

    List-Unsubscribe: <https://<public url>/unsubscribe?token=...>, <mailto:...>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

The collector mounts `router` (FastAPI), which serves

    GET  /unsubscribe?token=...   a confirmation page with a one-button form
    POST /unsubscribe?token=...   records the unsubscribe at once (the mail
                                  client's one-click POST has the body
                                  `List-Unsubscribe=One-Click`); 200 with a page

Tokens are HMAC-SHA256 signed with UNSUBSCRIBE_SECRET (comma-separated: the first
signs, all verify, for rotation), which every process that signs or verifies must
be given (the local set-up, `python -m warehouse.env`, generates one into
`.local/secrets/`); outside development mode it must be at least 32 characters and
the public URL of the links https (RFC 8058). Tokens carry no address, only the
customer id and the address hash, and are decoded strictly (base64url only,
typed claims).

The POST checks the token before it touches the database, then records the
suppression, revokes consent and cancels pending triggers in one short transaction
with a lock and statement timeout, skipping the trigger rows the engine holds
locked (the engine re-checks suppressions before it sends): a click never waits
on the engine. Database down or slow: 503 with Retry-After, never a silent loss.
This module imports nothing of the engine, so the collector can mount `router`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import quote

import psycopg

from campaigns import suppressions
from warehouse import settings

MIN_SECRET_CHARS = 32
MAX_TOKEN_CHARS = 1024
RETRY_AFTER_S = 5
DB_TIMEOUT_MS = 3000  # connect, lock and statement: the click gets its answer within seconds
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class InvalidToken(ValueError):
    pass


class ConfigError(RuntimeError):
    """A missing or weak unsubscribe secret, or a public URL that is not https outside development."""


def _secrets() -> list[bytes]:
    configured = [s.strip() for s in os.environ.get("UNSUBSCRIBE_SECRET", "").split(",") if s.strip()]
    if not configured:
        raise ConfigError(
            "UNSUBSCRIBE_SECRET is not set: every process that signs or verifies unsubscribe tokens"
            " needs the same one (`source .local/env.sh` sets the local set-up's)"
        )
    if len(configured[0]) < MIN_SECRET_CHARS and not settings.development_mode():
        raise ConfigError(f"UNSUBSCRIBE_SECRET is shorter than {MIN_SECRET_CHARS} characters")
    return [secret.encode() for secret in configured]


def check_config() -> None:
    """Raise ConfigError now rather than at the first click (the collector calls it at start-up)."""
    _secrets()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: base64url characters only (urlsafe_b64decode would skip any others)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


@dataclass(frozen=True)
class TokenClaims:
    customer_id: int | None
    email_hash: str
    campaign: str
    issued_at: int


def make_token(customer_id: int | None, email_hash: str, campaign: str, issued_at: int | None = None) -> str:
    body = _b64(
        json.dumps(
            {"c": customer_id, "h": email_hash, "k": campaign, "t": issued_at or int(time.time())},
            separators=(",", ":"),
        ).encode()
    )
    sig = hmac.new(_secrets()[0], body.encode(), hashlib.sha256).digest()[:18]
    return f"{body}.{_b64(sig)}"


class TokenSigner:
    """make_token for a batch: the secret read once."""

    def __init__(self) -> None:
        self._key = _secrets()[0]

    def sign(self, customer_id: int | None, email_hash: str, campaign: str, issued_at: int) -> str:
        body = _b64(
            json.dumps(
                {"c": customer_id, "h": email_hash, "k": campaign, "t": issued_at}, separators=(",", ":")
            ).encode()
        )
        return f"{body}.{_b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:18])}"


def verify_token(token: str) -> TokenClaims:
    if type(token) is not str or len(token) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        raise InvalidToken("malformed token")
    body, sig = token.split(".")
    try:
        given = _unb64(sig)
    except (ValueError, binascii.Error):
        raise InvalidToken("malformed token") from None
    for key in _secrets():
        if hmac.compare_digest(hmac.new(key, body.encode(), hashlib.sha256).digest()[:18], given):
            break
    else:
        raise InvalidToken("bad signature")
    try:
        data = json.loads(_unb64(body))
        claims = TokenClaims(data["c"], data["h"], data["k"], data["t"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidToken("malformed token body") from None
    if not (
        (claims.customer_id is None or type(claims.customer_id) is int)
        and type(claims.email_hash) is str
        and type(claims.campaign) is str
        and type(claims.issued_at) is int
    ):
        raise InvalidToken("malformed token claims")
    return claims


def unsubscribe_url(token: str, public_url: str) -> str:
    """The one-click link; outside development mode only over https (RFC 8058 requires it)."""
    if not public_url.startswith("https://") and not settings.development_mode():
        raise ConfigError(f"the public URL of unsubscribe links must be https, not {public_url!r}")
    return f"{public_url}/unsubscribe?token={quote(token, safe='')}"


def record_unsubscribe(conn: psycopg.Connection, token: str, source: str = "list_unsubscribe") -> TokenClaims:
    """Verify the token and record the suppression at once (idempotent).

    Also revokes consent and cancels the customer's pending triggers, so nothing
    already due goes out after the click. Trigger rows the engine holds locked are
    skipped, not waited for: the engine checks suppressions before it sends."""
    claims = verify_token(token)
    with conn.transaction():
        conn.execute(
            "select set_config('lock_timeout', %(ms)s, true), set_config('statement_timeout', %(ms)s, true)",
            {"ms": str(DB_TIMEOUT_MS)},
        )
        suppressions.add(conn, claims.email_hash, "unsubscribe", source)
        suppressions.revoke_consent(conn, claims.email_hash, claims.customer_id, source)
        if claims.customer_id is not None:
            conn.execute(
                """update ops.campaign_triggers set status = 'cancelled', outcome = 'unsubscribed', updated_at = now()
                   where trigger_id in (select trigger_id from ops.campaign_triggers
                                        where customer_id = %s and status = 'pending'
                                        for update skip locked)""",
                (claims.customer_id,),
            )
    return claims


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>{title}</title></head><body style='font-family:sans-serif;max-width:32em;margin:3em auto'>"
        f"<h1>{title}</h1>{body}</body></html>"
    )


def _make_router():
    from fastapi import APIRouter, Query
    from fastapi.responses import HTMLResponse, JSONResponse

    router = APIRouter()

    def invalid(exc: InvalidToken) -> JSONResponse:
        return JSONResponse({"error": "invalid_token", "detail": str(exc)}, status_code=400)

    @router.get("/unsubscribe", response_class=HTMLResponse)
    def unsubscribe_page(token: str = Query(...)):
        try:
            verify_token(token)
        except InvalidToken as exc:
            return invalid(exc)
        action = html.escape(f"/unsubscribe?token={quote(token, safe='')}", quote=True)
        form = (
            f"<form method='post' action='{action}'>"
            "<input type='hidden' name='List-Unsubscribe' value='One-Click'>"
            "<button type='submit'>Unsubscribe me</button></form>"
        )
        return HTMLResponse(_page("Unsubscribe", "<p>Stop all marketing emails from us?</p>" + form))

    @router.post("/unsubscribe", response_class=HTMLResponse)
    def unsubscribe_one_click(token: str = Query(...)):
        try:
            verify_token(token)  # before the database: a forged click costs no connection
        except InvalidToken as exc:
            return invalid(exc)
        try:
            with psycopg.connect(
                settings.warehouse_url(), autocommit=True, connect_timeout=DB_TIMEOUT_MS // 1000
            ) as conn:
                record_unsubscribe(conn, token)
        except psycopg.Error:
            # Never a silent loss: the mail provider or the reader's browser tries again.
            return HTMLResponse(
                _page("Please try again", "<p>We could not record your unsubscribe just now.</p>"),
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return HTMLResponse(
            _page("You are unsubscribed", "<p>You will receive no more marketing emails.</p>")
        )

    return router


def __getattr__(name: str):
    # `from campaigns.unsubscribe import router` builds the FastAPI router lazily.
    if name == "router":
        return _make_router()
    raise AttributeError(name)
