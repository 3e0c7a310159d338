"""Previews: render any campaign and variant for a customer (or sample data) to files.

With `customer_id` and a reachable warehouse, the profile, the customer's latest
trigger payload for the campaign, segments and recommendations come from the
warehouse; anything missing falls back to sample content, as a send would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from campaigns import config, deliver, render
from campaigns.schema import load_campaigns, load_policy
from campaigns.suppressions import hash_email
from campaigns.unsubscribe import make_token, unsubscribe_url

# Sample content: what a preview shows without a warehouse (the test fixtures insert these products too).
SAMPLE_CUSTOMER = {"customer_id": 0, "email": "preview@example.test", "first_name": "Alex", "timezone": "UTC"}
SAMPLE_PRODUCTS = [
    (1, "MUG-BLUE", "Blue stoneware mug", "kitchen", "14.00"),
    (2, "TEA-EARL", "Earl Grey loose-leaf tea, 250 g", "pantry", "9.50"),
    (3, "LAMP-OAK", "Oak desk lamp", "home", "79.00"),
    (4, "SOCK-WOOL", "Merino wool socks, 3 pairs", "apparel", "24.00"),
    (5, "BAG-TOTE", "Canvas tote bag", "apparel", "18.00"),
    (6, "CANDLE-FIG", "Fig & cedar scented candle", "home", "22.00"),
]


def image_url(sku: str) -> str:
    return f"https://shop.example/static/products/{sku.lower()}.jpg"


def sample_payload() -> dict[str, Any]:
    """A cart and browse history as templates see them (preview without a warehouse)."""
    products = {p["product_id"]: p for p in sample_products()}

    def line(product_id: int, **extra: Any) -> dict[str, Any]:
        p = products[product_id]
        return (
            {k: p[k] for k in ("product_id", "sku", "name", "image_url")}
            | {"price": float(p["price"])}
            | extra
        )

    return {
        "cart_id": "sample",
        "items": [line(3, quantity=1), line(1, quantity=2)],
        "viewed": [line(6), line(4)],
    }


def sample_products() -> list[dict[str, Any]]:
    return [
        {
            "product_id": pid,
            "sku": sku,
            "name": name,
            "category": cat,
            "price": price,
            "image_url": image_url(sku),
        }
        for pid, sku, name, cat, price in SAMPLE_PRODUCTS
    ]


def _from_warehouse(campaign: str, customer_id: int) -> tuple[dict, dict, list, bool, dict]:
    import psycopg

    from campaigns import content
    from campaigns.timers import render_payload
    from warehouse import settings

    with psycopg.connect(settings.warehouse_url(), autocommit=True) as conn:
        profile = content.profiles(conn, [customer_id]).get(customer_id)
        if profile is None:
            raise SystemExit(f"customer {customer_id} not found in raw.shop_customers or identify traits")
        row = conn.execute(
            "select payload from ops.campaign_triggers where campaign = %s and customer_id = %s"
            " order by updated_at desc limit 1",
            (campaign, customer_id),
        ).fetchone()
        payload = render_payload(row[0]) if row else sample_payload()
        recs = content.recommendations(conn, [customer_id]).get(customer_id)
        fallback = not recs
        recs = recs or content.bestsellers(conn) or sample_products()
        ids = [
            int(i["product_id"])
            for i in payload.get("items", []) + payload.get("viewed", [])
            if str(i.get("product_id")).isdigit()
        ]
        return profile, payload, recs, fallback, content.products(conn, ids)


def build(
    campaign_name: str, variant: str, customer_id: int | None = None
) -> tuple[render.RenderedEmail, bytes]:
    campaigns = load_campaigns(include_disabled=True)
    if campaign_name not in campaigns:
        raise SystemExit(f"unknown campaign {campaign_name!r}: {', '.join(sorted(campaigns))}")
    campaign = campaigns[campaign_name]
    if customer_id is not None:
        profile, payload, recs, fallback, catalogue = _from_warehouse(campaign_name, customer_id)
    else:
        profile, payload, recs, fallback, catalogue = (
            SAMPLE_CUSTOMER,
            sample_payload(),
            sample_products(),
            True,
            {},
        )
    renderer = render.Renderer({campaign_name: campaign})
    token = make_token(profile.get("customer_id"), hash_email(profile["email"]), campaign_name)
    unsub = unsubscribe_url(token, config.public_url())
    ctx = render.make_context(
        campaign=campaign,
        customer=profile,
        payload=payload,
        products=catalogue,
        recommendations=recs,
        recommendations_are_fallback=fallback,
        unsubscribe_url=unsub,
    )
    email = renderer.render(campaign_name, variant, ctx)
    policy = load_policy()
    eml = deliver.build_message(
        sender=policy.sender.from_,
        recipient=profile["email"],
        reply_to=policy.sender.reply_to,
        message_id=f"<preview.{campaign_name}.{variant}@{config.mail_domain()}>",
        subject=email.subject,
        html=email.html,
        text=email.text,
        list_unsubscribe_url=unsub,
        list_unsubscribe_mailto=f"mailto:unsubscribe@{config.mail_domain()}?subject=unsubscribe",
    )
    return email, eml


def write_preview(campaign_name: str, variant: str | None, customer_id: int | None, out: Path) -> list[Path]:
    campaigns = load_campaigns(include_disabled=True)
    if campaign_name not in campaigns:
        raise SystemExit(f"unknown campaign {campaign_name!r}: {', '.join(sorted(campaigns))}")
    variants = [variant] if variant else [v.name for v in campaigns[campaign_name].variants]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for v in variants:
        email, eml = build(campaign_name, v, customer_id)
        stem = (
            out / f"{campaign_name}.{v}"
            if customer_id is None
            else out / f"{campaign_name}.{v}.{customer_id}"
        )
        meta: dict[str, Any] = {
            "subject": email.subject,
            "preheader": email.preheader,
            "template_version": email.template_version,
        }
        for suffix, data in (
            (".html", email.html),
            (".txt", f"Subject: {meta['subject']}\nPreheader: {meta['preheader']}\n\n{email.text}"),
        ):
            path = stem.with_suffix(stem.suffix + suffix)
            path.write_text(data)
            written.append(path)
        path = stem.with_suffix(stem.suffix + ".eml")
        path.write_bytes(eml)
        written.append(path)
    return written
