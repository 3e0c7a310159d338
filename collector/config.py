"""Configuration from environment variables, read once at start-up.

    COLLECTOR_HOST            127.0.0.1
    COLLECTOR_PORT            8765
    COLLECTOR_WRITE_KEYS      "key1:web,key2:app"  write key -> source name
    COLLECTOR_WEBHOOK_SECRETS "shop:whsec_a whsec_b,esp:whsec_c"  Standard Webhooks
                              secrets per source; several (space-separated) for rotation
    COLLECTOR_SHOPIFY_SECRETS "shop:secret1 secret2"  X-Shopify-Hmac-SHA256 secrets per source
    COLLECTOR_POOL_SIZE       4      connections to the warehouse
    COLLECTOR_WRITERS         2      group-commit writers, each with its own connection (two: one
                                     COPYs while the other commits; measured faster than 1 or 3)
    COLLECTOR_DB_TIMEOUT      3      seconds to wait for a connection before answering 503
    COLLECTOR_RETRY_AFTER     1      seconds, sent in Retry-After with every 503
    COLLECTOR_LOG_LEVEL       INFO
    WAREHOUSE_URL             the warehouse database (warehouse.settings)

Unset write keys and secrets fall back to the development values below, with a
warning in the log: fine for the demo on localhost, never for a real shop.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from warehouse import settings as warehouse_settings

log = logging.getLogger("collector")

DEV_WRITE_KEYS = {"dev-web-write-key": "web", "dev-app-write-key": "app"}
# "whsec_" + base64 of the raw secret, as Standard Webhooks senders expect.
DEV_WEBHOOK_SECRETS = {
    "shop": ("whsec_ZGV2LXNob3Atd2ViaG9vay1zZWNyZXQtMzJieXRlcyE=",),  # dev-shop-webhook-secret-32bytes!
    "esp": ("whsec_ZGV2LWVzcC13ZWJob29rLXNlY3JldC0zMi1ieXRlcyE=",),  # dev-esp-webhook-secret-32-bytes!
}
DEV_SHOPIFY_SECRETS = {"shopify": ("dev-shopify-app-secret",)}


def parse_mapping(value: str, name: str) -> dict[str, tuple[str, ...]]:
    """Parse "key:v1 v2,key2:v3" into {"key": ("v1", "v2"), "key2": ("v3",)}."""
    result: dict[str, tuple[str, ...]] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, rest = item.partition(":")
        values = tuple(rest.split())
        if not sep or not key.strip() or not values:
            raise ValueError(
                f"{name}: expected 'name:value[ value2]' items separated by commas, got {item!r}"
            )
        result[key.strip()] = result.get(key.strip(), ()) + values
    return result


def _write_keys(value: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for key, sources in parse_mapping(value, "COLLECTOR_WRITE_KEYS").items():
        if len(sources) != 1:
            raise ValueError(f"COLLECTOR_WRITE_KEYS: write key maps to one source name, got {len(sources)}")
        keys[key] = sources[0]
    return keys


@dataclass(frozen=True)
class Settings:
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8765
    write_keys: dict[str, str] = field(default_factory=lambda: dict(DEV_WRITE_KEYS))
    webhook_secrets: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEV_WEBHOOK_SECRETS))
    shopify_secrets: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEV_SHOPIFY_SECRETS))
    pool_size: int = 4
    writers: int = 2
    db_timeout: float = 3.0
    retry_after: int = 1
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        kwargs: dict = {
            "database_url": env.get("WAREHOUSE_URL") or warehouse_settings.warehouse_url(),
            "host": env.get("COLLECTOR_HOST", "127.0.0.1"),
            "port": int(env.get("COLLECTOR_PORT", "8765")),
            "pool_size": int(env.get("COLLECTOR_POOL_SIZE", "4")),
            "writers": int(env.get("COLLECTOR_WRITERS", "2")),
            "db_timeout": float(env.get("COLLECTOR_DB_TIMEOUT", "3")),
            "retry_after": int(env.get("COLLECTOR_RETRY_AFTER", "1")),
            "log_level": env.get("COLLECTOR_LOG_LEVEL", "INFO").upper(),
        }
        if env.get("COLLECTOR_WRITE_KEYS"):
            kwargs["write_keys"] = _write_keys(env["COLLECTOR_WRITE_KEYS"])
        else:
            log.warning("COLLECTOR_WRITE_KEYS is not set: accepting the development write keys only")
        if env.get("COLLECTOR_WEBHOOK_SECRETS"):
            kwargs["webhook_secrets"] = parse_mapping(
                env["COLLECTOR_WEBHOOK_SECRETS"], "COLLECTOR_WEBHOOK_SECRETS"
            )
        else:
            log.warning("COLLECTOR_WEBHOOK_SECRETS is not set: webhooks verify with the development secrets")
        if env.get("COLLECTOR_SHOPIFY_SECRETS") is not None:
            kwargs["shopify_secrets"] = parse_mapping(
                env["COLLECTOR_SHOPIFY_SECRETS"], "COLLECTOR_SHOPIFY_SECRETS"
            )
        return cls(**kwargs)
