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
    COLLECTOR_DB_TIMEOUT      3      seconds a request waits for its commit (queue, connection and
                                     statement included) before answering 503; also the statement
                                     and lock timeout of the collector's sessions
    COLLECTOR_RETRY_AFTER     1      seconds, sent in Retry-After with every 503
    COLLECTOR_MAX_PENDING     20000  events queued or being written; past it new requests get 503
    COLLECTOR_MAX_REQUESTS    512    requests waiting for their commit; past it new ones get 503
    COLLECTOR_EARLIEST_TIMESTAMP 2000-01-01T00:00:00Z  timestamps before it are refused
    COLLECTOR_MAX_CLOCK_AHEAD 86400  seconds a timestamp may lie ahead of the receive time
    COLLECTOR_LOG_LEVEL       INFO
    WAREHOUSE_URL             the warehouse database (warehouse.settings)
    UNSUBSCRIBE_SECRET        the key of unsubscribe tokens (campaigns.unsubscribe), shared with
                              the campaign engine

Development mode (EMAILP_ENV=development, which `python -m warehouse.env` sets for the
local set-up): unset write keys and secrets fall back to the development values
below, with a warning. Anywhere else start-up fails (ConfigError) when write keys or
webhook secrets are missing or are the development ones, or (campaigns.unsubscribe)
when UNSUBSCRIBE_SECRET is missing or short. No write key may name a source `webhook:…`: that namespace is
the signed webhooks' (the ingest trusts suppression-grade events only from it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from warehouse import settings as warehouse_settings

log = logging.getLogger("collector")

WEBHOOK_SOURCE_PREFIX = "webhook:"

DEV_WRITE_KEYS = {"dev-web-write-key": "web", "dev-app-write-key": "app"}
# "whsec_" + base64 of the raw secret, as Standard Webhooks senders expect.
DEV_WEBHOOK_SECRETS = {
    "shop": ("whsec_ZGV2LXNob3Atd2ViaG9vay1zZWNyZXQtMzJieXRlcyE=",),  # dev-shop-webhook-secret-32bytes!
    "esp": ("whsec_ZGV2LWVzcC13ZWJob29rLXNlY3JldC0zMi1ieXRlcyE=",),  # dev-esp-webhook-secret-32-bytes!
}
DEV_SHOPIFY_SECRETS = {"shopify": ("dev-shopify-app-secret",)}


class ConfigError(ValueError):
    """The collector must not start with this configuration."""


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
            raise ConfigError(
                f"{name}: expected 'name:value[ value2]' items separated by commas, got {item!r}"
            )
        result[key.strip()] = result.get(key.strip(), ()) + values
    return result


def _write_keys(value: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for key, sources in parse_mapping(value, "COLLECTOR_WRITE_KEYS").items():
        if len(sources) != 1:
            raise ConfigError(f"COLLECTOR_WRITE_KEYS: write key maps to one source name, got {len(sources)}")
        source = sources[0]
        if source.lower().startswith(WEBHOOK_SOURCE_PREFIX):
            raise ConfigError(
                f"COLLECTOR_WRITE_KEYS: source {source!r} starts with {WEBHOOK_SOURCE_PREFIX!r}, the signed"
                " webhooks' namespace: a write key must not speak for a webhook sender"
            )
        if "\\" in source:  # never in a row's COPY text unescaped (segment.copy_text)
            raise ConfigError(f"COLLECTOR_WRITE_KEYS: source {source!r} contains a backslash")
        keys[key] = source
    return keys


def _timestamp(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{name}: not an ISO-8601 timestamp: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _check_deployment(settings: Settings) -> None:
    """Outside development mode: no development secret (UNSUBSCRIBE_SECRET is campaigns.unsubscribe's
    check_config, which create_app runs when it mounts the route)."""
    problems = []
    if set(settings.write_keys) & set(DEV_WRITE_KEYS):
        problems.append("COLLECTOR_WRITE_KEYS holds a development write key")
    for name, configured, dev in (
        ("COLLECTOR_WEBHOOK_SECRETS", settings.webhook_secrets, DEV_WEBHOOK_SECRETS),
        ("COLLECTOR_SHOPIFY_SECRETS", settings.shopify_secrets, DEV_SHOPIFY_SECRETS),
    ):
        known = {secret for secrets in dev.values() for secret in secrets}
        if any(secret in known for secrets in configured.values() for secret in secrets):
            problems.append(f"{name} holds a development secret")
    if problems:
        raise ConfigError(
            "refusing to start outside development mode (EMAILP_ENV is not 'development'): "
            + "; ".join(problems)
        )


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
    max_pending_events: int = 20_000
    max_waiting_requests: int = 512
    earliest_timestamp: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_clock_ahead: timedelta = timedelta(days=1)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read the environment; raises ConfigError for a configuration that must not serve."""
        env = os.environ if environ is None else environ
        development = env.get("EMAILP_ENV", "").strip().lower() == warehouse_settings.DEVELOPMENT
        try:
            kwargs: dict = {
                "database_url": env.get("WAREHOUSE_URL") or warehouse_settings.warehouse_url(),
                "host": env.get("COLLECTOR_HOST", "127.0.0.1"),
                "port": int(env.get("COLLECTOR_PORT", "8765")),
                "pool_size": int(env.get("COLLECTOR_POOL_SIZE", "4")),
                "writers": int(env.get("COLLECTOR_WRITERS", "2")),
                "db_timeout": float(env.get("COLLECTOR_DB_TIMEOUT", "3")),
                "retry_after": int(env.get("COLLECTOR_RETRY_AFTER", "1")),
                "max_pending_events": int(env.get("COLLECTOR_MAX_PENDING", "20000")),
                "max_waiting_requests": int(env.get("COLLECTOR_MAX_REQUESTS", "512")),
                "max_clock_ahead": timedelta(seconds=float(env.get("COLLECTOR_MAX_CLOCK_AHEAD", "86400"))),
                "log_level": env.get("COLLECTOR_LOG_LEVEL", "INFO").upper(),
            }
        except ValueError as exc:
            raise ConfigError(f"a COLLECTOR_* number is not valid: {exc}") from None
        if env.get("COLLECTOR_EARLIEST_TIMESTAMP"):
            kwargs["earliest_timestamp"] = _timestamp(
                env["COLLECTOR_EARLIEST_TIMESTAMP"], "COLLECTOR_EARLIEST_TIMESTAMP"
            )
        fallback = "the development values (EMAILP_ENV=development)" if development else "none"
        if env.get("COLLECTOR_WRITE_KEYS"):
            kwargs["write_keys"] = _write_keys(env["COLLECTOR_WRITE_KEYS"])
        elif development:
            log.warning("COLLECTOR_WRITE_KEYS is not set: accepting the development write keys only")
        else:
            raise ConfigError(f"COLLECTOR_WRITE_KEYS is not set (falls back to {fallback})")
        if env.get("COLLECTOR_WEBHOOK_SECRETS"):
            kwargs["webhook_secrets"] = parse_mapping(
                env["COLLECTOR_WEBHOOK_SECRETS"], "COLLECTOR_WEBHOOK_SECRETS"
            )
        elif development:
            log.warning("COLLECTOR_WEBHOOK_SECRETS is not set: webhooks verify with the development secrets")
        else:
            raise ConfigError(f"COLLECTOR_WEBHOOK_SECRETS is not set (falls back to {fallback})")
        if env.get("COLLECTOR_SHOPIFY_SECRETS") is not None:
            kwargs["shopify_secrets"] = parse_mapping(
                env["COLLECTOR_SHOPIFY_SECRETS"], "COLLECTOR_SHOPIFY_SECRETS"
            )
        elif not development:
            kwargs["shopify_secrets"] = {}
        settings = cls(**kwargs)
        if not development:
            _check_deployment(settings)
        return settings
