"""Logs carry no personal data: email addresses are replaced by a short hash.

The collector never logs payloads, ids or client addresses in the first place
(uvicorn's access log, which prints client IPs, is off); this filter is the
second line of defence for whatever a library might log.
"""

from __future__ import annotations

import hashlib
import logging
import re

EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+"
)


def hash_email(match: re.Match) -> str:
    return "<email:" + hashlib.sha256(match.group(0).lower().encode()).hexdigest()[:12] + ">"


def redact(text: str) -> str:
    return EMAIL.sub(hash_email, text)


class RedactingFilter(logging.Filter):
    """Formats the record's message once, redacted, so arguments cannot smuggle an address in."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg = redact(message)
            record.args = None
        if record.exc_info and record.exc_info[1] is not None and "@" in str(record.exc_info[1]):
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def log_config(level: str = "INFO") -> dict:
    """A logging.config dict for uvicorn and the collector: one stderr handler, redacting."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactingFilter}},
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "collector": {"level": level},
            "uvicorn": {"level": "INFO"},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"level": "WARNING", "propagate": False},
        },
    }
