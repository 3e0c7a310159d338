"""Deterministic variant assignment: the same customer always lands in the same arm.

bucket = first 8 bytes of sha256("<campaign>:<experiment>:<customer_id>") / 2**64,
uniform on [0, 1). Buckets below `holdout` are held out (no email, but recorded
for the lift measurement); the rest are split by variant weight. Changing the
campaign's `experiment` id reshuffles everyone, on purpose.
"""

from __future__ import annotations

import hashlib

from campaigns.schema import Campaign

HOLDOUT = "holdout"


def bucket(campaign: str, experiment: str, customer_id: int) -> float:
    digest = hashlib.sha256(f"{campaign}:{experiment}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(campaign: Campaign, customer_id: int) -> tuple[str, float]:
    """(variant name or 'holdout', bucket)."""
    b = bucket(campaign.name, campaign.experiment, customer_id)
    if b < campaign.holdout:
        return HOLDOUT, b
    # rescale the non-held-out part to [0, 1) and walk the cumulative weights
    x = (b - campaign.holdout) / (1.0 - campaign.holdout)
    total = sum(v.weight for v in campaign.variants)
    acc = 0.0
    for v in campaign.variants:
        acc += v.weight / total
        if x < acc:
            return v.name, b
    return campaign.variants[-1].name, b
