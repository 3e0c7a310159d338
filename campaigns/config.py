"""Runtime settings of the campaign engine, all from the environment with local defaults.

| variable | default | what |
| --- | --- | --- |
| CAMPAIGNS_DIR | campaigns/definitions | campaign YAML files |
| CAMPAIGNS_POLICY | campaigns/policy.yaml | frequency caps, quiet hours, sender |
| CAMPAIGNS_SMTP_CONN_ID | smtp_campaigns | Airflow connection of the SMTP relay |
| CAMPAIGNS_PUBLIC_URL | http://127.0.0.1:8765 (the collector) | base of unsubscribe links |
| CAMPAIGNS_MAIL_DOMAIN | shop.example | right-hand side of Message-IDs |
| CAMPAIGNS_SHOP_URL | https://shop.example | base of product, cart and shop links |
| UNSUBSCRIBE_SECRET | required; the local set-up generates it into .local/secrets/ | HMAC key of unsubscribe tokens |
| SMTP_SINK_PORT | 8025 | the local SMTP sink |
| SMTP_SINK_DIR | .local/outbox | where the sink stores .eml files |
| CAMPAIGNS_DELAY_SCALE | 1 | multiplies every event trigger's delay, for demos and tests (0.01: 30 minutes become 18 s); the definitions stay as shipped |
"""

from __future__ import annotations

import os
from pathlib import Path

from warehouse import settings

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = settings.PROJECT_ROOT / "templates"


def definitions_dir() -> Path:
    return Path(os.environ.get("CAMPAIGNS_DIR") or PACKAGE_DIR / "definitions")


def policy_path() -> Path:
    return Path(os.environ.get("CAMPAIGNS_POLICY") or PACKAGE_DIR / "policy.yaml")


def smtp_conn_id() -> str:
    return os.environ.get("CAMPAIGNS_SMTP_CONN_ID", "smtp_campaigns")


def public_url() -> str:
    return os.environ.get("CAMPAIGNS_PUBLIC_URL", "http://127.0.0.1:8765").rstrip("/")


def mail_domain() -> str:
    return os.environ.get("CAMPAIGNS_MAIL_DOMAIN", "shop.example")


def sink_port() -> int:
    return int(os.environ.get("SMTP_SINK_PORT", "8025"))


def sink_dir() -> Path:
    return Path(os.environ.get("SMTP_SINK_DIR") or settings.LOCAL_DIR / "outbox")


def shop_url() -> str:
    return os.environ.get("CAMPAIGNS_SHOP_URL", "https://shop.example").rstrip("/")


def delay_scale() -> float:
    """CAMPAIGNS_DELAY_SCALE: a positive factor applied to event-trigger delays when loaded."""
    raw = os.environ.get("CAMPAIGNS_DELAY_SCALE", "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"CAMPAIGNS_DELAY_SCALE must be a number, got {raw!r}") from None
    if not 0 < scale <= 1000:
        raise ValueError(f"CAMPAIGNS_DELAY_SCALE must be in (0, 1000], got {raw!r}")
    return scale
