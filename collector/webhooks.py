"""Signed webhooks from the shop and the email provider, stored as Segment track calls.

Two signature schemes, chosen per request:
- Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature; HMAC-SHA256
  over "id.timestamp.body"; 5 minutes of tolerance both ways), verified by the
  `standardwebhooks` library against each of the source's secrets in turn, so a
  secret can be rotated without downtime; the sender may also sign with several
  secrets at once (several signatures in the header).
- Shopify (X-Shopify-Hmac-SHA256: base64 HMAC-SHA256 of the body), for sources
  with a Shopify secret. Shopify signs no timestamp: a replay is caught only by
  X-Shopify-Webhook-Id deduplication.

A Standard Webhooks payload is `{"type": "order.placed", "timestamp": "...",
"data": {...}}`. It becomes a track call: message_id `webhook:<source>:<webhook-id>`
(the sender's retries deduplicate), source `webhook:<source>`, event named after
Segment's e-commerce and email specs (EVENT_NAMES; an unknown type is stored
under its own name rather than refused, so a provider's new event type is not
retried for days), properties = `data`, the ids from `data` when present.

The payload meets the Segment calls' content rules (collector.segment): timestamps
within the window, e-commerce numbers finite, integer ids within bigint; a
signed payload that breaks them is a 400 naming the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, datetime

import orjson
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from collector.errors import ApiError, bad_request
from collector.segment import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    Row,
    Window,
    _object,
    _text,
    accepted_window,
    check_properties,
    integer_id,
    parse_timestamp,
)

MAX_WEBHOOK_BYTES = 256 * 1024

EVENT_NAMES = {
    "cart.updated": "Cart Updated",
    "checkout.started": "Checkout Started",
    "order.placed": "Order Completed",
    "order.completed": "Order Completed",
    "product.viewed": "Product Viewed",
    "email.delivered": "Email Delivered",
    "email.opened": "Email Opened",
    "email.clicked": "Email Link Clicked",
    "email.bounced": "Email Bounced",
    "email.complained": "Marked as Spam",
    "email.unsubscribed": "Unsubscribed",
}
SHOPIFY_TOPICS = {
    "carts/create": "Cart Updated",
    "carts/update": "Cart Updated",
    "checkouts/create": "Checkout Started",
    "orders/create": "Order Completed",
}
USER_ID_KEYS = ("user_id", "userId", "customer_id", "customerId")
ANONYMOUS_ID_KEYS = ("anonymous_id", "anonymousId")


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message)


class Verifier:
    """The secrets of every configured webhook source."""

    def __init__(self, standard: dict[str, tuple[str, ...]], shopify: dict[str, tuple[str, ...]]):
        self.standard = {
            source: [Webhook(secret) for secret in secrets] for source, secrets in standard.items()
        }
        self.shopify = {
            source: [secret.encode() for secret in secrets] for source, secrets in shopify.items()
        }

    def knows(self, source: str) -> bool:
        return source in self.standard or source in self.shopify

    def verify(self, source: str, body: bytes, headers) -> tuple[str, str]:
        """Return (scheme, webhook id) or raise a 401."""
        shopify_hmac = headers.get("x-shopify-hmac-sha256")
        if shopify_hmac is not None and source in self.shopify:
            return "shopify", self._verify_shopify(source, body, shopify_hmac, headers)
        if source not in self.standard:
            raise _unauthorized("missing_signature", "X-Shopify-Hmac-SHA256 is required for this source")
        return "standard-webhooks", self._verify_standard(source, body, headers)

    def _verify_standard(self, source: str, body: bytes, headers) -> str:
        signed = {
            name: headers.get(name, "") for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        }
        if not all(signed.values()):
            missing = ", ".join(name for name, value in signed.items() if not value)
            raise _unauthorized("missing_signature", f"missing Standard Webhooks header(s): {missing}")
        try:
            text = body.decode()
        except UnicodeDecodeError:  # Standard Webhooks signs the payload as UTF-8 text
            raise _unauthorized(
                "invalid_signature", "no signature can match a body that is not UTF-8"
            ) from None
        for webhook in self.standard[source]:
            try:
                webhook.verify(text, signed, json_parse=False)
                return signed["webhook-id"]
            except WebhookVerificationError as exc:
                reason = str(exc)
                if "too old" in reason or "too new" in reason:
                    raise _unauthorized(
                        "stale_timestamp",
                        f"webhook-timestamp is outside the 5-minute tolerance ({reason.lower()})",
                    ) from None
                if reason != "No matching signature found":
                    raise _unauthorized(
                        "invalid_signature", f"invalid webhook signature headers: {reason}"
                    ) from None
            except (ValueError, binascii.Error):  # a signature that is not "v1,<base64>"
                raise _unauthorized("invalid_signature", "webhook-signature is malformed") from None
        raise _unauthorized("invalid_signature", "no webhook-signature matches a secret of this source")

    def _verify_shopify(self, source: str, body: bytes, given: str, headers) -> str:
        try:
            given_digest = base64.b64decode(given, validate=True)
        except (ValueError, binascii.Error):
            raise _unauthorized("invalid_signature", "X-Shopify-Hmac-SHA256 is not base64") from None
        if not any(
            hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).digest(), given_digest)
            for secret in self.shopify[source]
        ):
            raise _unauthorized("invalid_signature", "X-Shopify-Hmac-SHA256 matches no secret of this source")
        webhook_id = headers.get("x-shopify-webhook-id") or headers.get("x-shopify-event-id")
        if not webhook_id:
            raise bad_request(
                "missing_webhook_id", "X-Shopify-Webhook-Id is required", field="X-Shopify-Webhook-Id"
            )
        return webhook_id


def _first_id(data: dict, keys: tuple[str, ...], nested: str | None = None) -> str | None:
    """The first id found; a user id (the ingest casts numeric ones) within bigint."""
    for key in keys:
        value = _text(data.get(key), f"data.{key}", None, MAX_ID_CHARS, ids=True)
        if value is not None:
            return integer_id(value, f"data.{key}", None) if nested else value
    if nested and type(data.get(nested)) is dict:
        value = _text(data[nested].get("id"), f"data.{nested}.id", None, MAX_ID_CHARS, ids=True)
        return None if value is None else integer_id(value, f"data.{nested}.id", None)
    return None


def to_row(
    source: str,
    scheme: str,
    webhook_id: str,
    body: bytes,
    headers,
    received_at: datetime,
    window: Window | None = None,
) -> Row:
    """Map a verified webhook to a raw.events row (a track call); timestamps within `window`
    (default: accepted_window(received_at))."""
    window = window or accepted_window(received_at)
    webhook_id = _text(webhook_id, "webhook-id", None, MAX_ID_CHARS, ids=False)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request("invalid_json", f"the webhook body is not valid JSON: {exc}") from None
    if type(payload) is not dict:
        raise bad_request("invalid_body", "the webhook body must be a JSON object")
    context: dict = {"webhook": {"id": webhook_id, "scheme": scheme}}
    if scheme == "shopify":
        topic = _text(headers.get("x-shopify-topic"), "X-Shopify-Topic", None, MAX_NAME_CHARS, ids=False)
        if topic is None:
            raise bad_request("missing_type", "X-Shopify-Topic is required", field="X-Shopify-Topic")
        event = SHOPIFY_TOPICS.get(topic, topic)
        context["webhook"]["type"] = topic
        data = payload
        occurred_at = parse_timestamp(
            headers.get("x-shopify-triggered-at") or data.get("updated_at") or data.get("created_at"),
            "updated_at",
            None,
            window,
        )
        user_id = _first_id(data, USER_ID_KEYS, "customer")
        anonymous_id = _text(
            data.get("token") or data.get("cart_token"), "data.token", None, MAX_ID_CHARS, ids=True
        )
    else:
        kind = _text(payload.get("type"), "type", None, MAX_NAME_CHARS, ids=False)
        if kind is None:
            raise bad_request("missing_type", "type is required in the webhook payload", field="type")
        event = EVENT_NAMES.get(kind.lower().replace("_", ".").replace("/", "."), kind)
        context["webhook"]["type"] = kind
        data = payload.get("data", {})
        if type(data) is not dict:
            raise bad_request("wrong_type", "data must be a JSON object", field="data")
        occurred_at = parse_timestamp(payload.get("timestamp"), "timestamp", None, window)
        if occurred_at is None:
            occurred_at = datetime.fromtimestamp(int(float(headers["webhook-timestamp"])), UTC)
        user_id = _first_id(data, USER_ID_KEYS, "customer")
        anonymous_id = _first_id(data, ANONYMOUS_ID_KEYS)
    check_properties(data, None, "data")
    return (
        f"webhook:{source}:{webhook_id}",
        "track",
        event,
        None,
        user_id,
        anonymous_id,
        None,
        None,
        _object(data, "data", None),
        "{}",
        orjson.dumps(context).decode(),
        (occurred_at or received_at).isoformat(),
        None,
        received_at.isoformat(),
        f"webhook:{source}",
    )
