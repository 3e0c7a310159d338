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
signs, all verify, for rotation); without it a random secret is generated once
into .local/unsubscribe_secret so the campaign engine and the collector on one
machine agree. Tokens carry no address, only the customer id and the address hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

import psycopg

from campaigns import suppressions
from warehouse import settings


class InvalidToken(ValueError):
    pass


def _secrets() -> list[bytes]:
    configured = os.environ.get("UNSUBSCRIBE_SECRET")
    if configured:
        return [s.strip().encode() for s in configured.split(",") if s.strip()]
    path = settings.LOCAL_DIR / "unsubscribe_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return [path.read_text().strip().encode()]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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
    try:
        body, sig = token.split(".")
        given = _unb64(sig)
    except (ValueError, TypeError):
        raise InvalidToken("malformed token") from None
    for key in _secrets():
        if hmac.compare_digest(hmac.new(key, body.encode(), hashlib.sha256).digest()[:18], given):
            break
    else:
        raise InvalidToken("bad signature")
    try:
        data = json.loads(_unb64(body))
        return TokenClaims(data["c"], data["h"], data["k"], int(data["t"]))
    except (ValueError, KeyError, TypeError):
        raise InvalidToken("malformed token body") from None


def unsubscribe_url(token: str, public_url: str) -> str:
    return f"{public_url}/unsubscribe?token={token}"


def record_unsubscribe(conn: psycopg.Connection, token: str, source: str = "list_unsubscribe") -> TokenClaims:
    """Verify the token and record the suppression at once (idempotent).

    Also revokes consent and cancels the customer's pending triggers, so nothing
    already due goes out after the click."""
    claims = verify_token(token)
    with conn.transaction():
        suppressions.add(conn, claims.email_hash, "unsubscribe", source)
        suppressions.revoke_consent(conn, claims.email_hash, claims.customer_id, source)
        if claims.customer_id is not None:
            conn.execute(
                "update ops.campaign_triggers set status = 'cancelled', outcome = 'unsubscribed', updated_at = now()"
                " where customer_id = %s and status = 'pending'",
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

    @router.get("/unsubscribe", response_class=HTMLResponse)
    def unsubscribe_page(token: str = Query(...)):
        try:
            verify_token(token)
        except InvalidToken as exc:
            return JSONResponse({"error": "invalid_token", "detail": str(exc)}, status_code=400)
        form = (
            f"<form method='post' action='/unsubscribe?token={token}'>"
            "<input type='hidden' name='List-Unsubscribe' value='One-Click'>"
            "<button type='submit'>Unsubscribe me</button></form>"
        )
        return HTMLResponse(_page("Unsubscribe", "<p>Stop all marketing emails from us?</p>" + form))

    @router.post("/unsubscribe", response_class=HTMLResponse)
    def unsubscribe_one_click(token: str = Query(...)):
        from warehouse.db import connect_warehouse

        try:
            with connect_warehouse(autocommit=True) as conn:
                record_unsubscribe(conn, token)
        except InvalidToken as exc:
            return JSONResponse({"error": "invalid_token", "detail": str(exc)}, status_code=400)
        return HTMLResponse(
            _page("You are unsubscribed", "<p>You will receive no more marketing emails.</p>")
        )

    return router


def __getattr__(name: str):
    # `from campaigns.unsubscribe import router` builds the FastAPI router lazily.
    if name == "router":
        return _make_router()
    raise AttributeError(name)
