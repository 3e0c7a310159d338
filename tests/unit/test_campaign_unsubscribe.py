"""Unsubscribe tokens: signed, verifiable after key rotation, tamper-evident."""

from __future__ import annotations

import pytest

from campaigns import unsubscribe


def test_round_trip_and_rotation(monkeypatch):
    monkeypatch.setenv("UNSUBSCRIBE_SECRET", "new-secret,old-secret")
    token = unsubscribe.make_token(42, "h" * 64, "cart_abandonment")
    claims = unsubscribe.verify_token(token)
    assert (claims.customer_id, claims.email_hash, claims.campaign) == (42, "h" * 64, "cart_abandonment")
    monkeypatch.setenv("UNSUBSCRIBE_SECRET", "old-secret")
    old = unsubscribe.make_token(42, "h" * 64, "cart_abandonment")
    monkeypatch.setenv("UNSUBSCRIBE_SECRET", "new-secret,old-secret")
    assert unsubscribe.verify_token(old).customer_id == 42
    assert "@" not in token and "." in token


def test_tampering_is_rejected(monkeypatch):
    monkeypatch.setenv("UNSUBSCRIBE_SECRET", "s")
    body, sig = unsubscribe.make_token(1, "h", "c").split(".")
    forged = unsubscribe._b64(b'{"c":2,"h":"h","k":"c","t":1}')
    for bad in (f"{forged}.{sig}", f"{body}.AAAA", "garbage", ""):
        with pytest.raises(unsubscribe.InvalidToken):
            unsubscribe.verify_token(bad)
