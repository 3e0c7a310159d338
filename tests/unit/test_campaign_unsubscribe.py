"""Unsubscribe tokens: signed, verifiable after key rotation, tamper-evident, strictly decoded;
the secret and the https public URL required outside development mode."""

from __future__ import annotations

import hashlib
import hmac
import json

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


def test_decoding_is_strict(monkeypatch):
    monkeypatch.setenv("UNSUBSCRIBE_SECRET", "s")
    token = unsubscribe.make_token(1, "h", "c")
    body, sig = token.split(".")
    # urlsafe_b64decode skips characters outside the alphabet: these verified before.
    for bad in (
        f"{token}'><script>alert(1)</script>",
        f"{body}.{sig[:4]}!{sig[4:]}",
        f"{body}.{sig}=",
        token + " ",
    ):
        with pytest.raises(unsubscribe.InvalidToken):
            unsubscribe.verify_token(bad)
    for claims in ({"c": "1", "h": "h", "k": "c", "t": 1}, {"c": 1, "h": "h", "k": "c", "t": "1"}, [1]):
        forged = unsubscribe._b64(json.dumps(claims).encode())
        signature = hmac.new(b"s", forged.encode(), hashlib.sha256).digest()[:18]
        with pytest.raises(unsubscribe.InvalidToken):
            unsubscribe.verify_token(f"{forged}.{unsubscribe._b64(signature)}")


def test_the_secret_is_required_and_long_outside_development(monkeypatch):
    monkeypatch.delenv("UNSUBSCRIBE_SECRET", raising=False)
    monkeypatch.setenv("EMAILP_ENV", "development")
    with pytest.raises(unsubscribe.ConfigError):  # never a silently generated, unshared one
        unsubscribe.check_config()
    monkeypatch.setenv("UNSUBSCRIBE_SECRET", "short")
    unsubscribe.check_config()
    monkeypatch.setenv("EMAILP_ENV", "production")
    with pytest.raises(unsubscribe.ConfigError):
        unsubscribe.check_config()
    monkeypatch.setenv("UNSUBSCRIBE_SECRET", "x" * 32)
    unsubscribe.check_config()


def test_one_click_links_are_https_outside_development(monkeypatch):
    monkeypatch.setenv("EMAILP_ENV", "production")
    with pytest.raises(unsubscribe.ConfigError):
        unsubscribe.unsubscribe_url("a.b", "http://shop.example")
    assert (
        unsubscribe.unsubscribe_url("a.b", "https://shop.example")
        == "https://shop.example/unsubscribe?token=a.b"
    )
    monkeypatch.setenv("EMAILP_ENV", "development")
    assert unsubscribe.unsubscribe_url("a.b", "http://127.0.0.1:8765").startswith("http://127.0.0.1:8765/")
