"""The messages of a batch: their ledger rows, what their rendering shares, and each
message's bytes (rendered per recipient, with its List-Unsubscribe link)."""

from __future__ import annotations

from email.utils import parseaddr

import psycopg

from campaigns import config, content, deliver, ledger, render
from campaigns.batch import Batch
from campaigns.eligibility import Decision, email_hash_of
from campaigns.schema import Campaign, Policy
from campaigns.unsubscribe import TokenSigner, unsubscribe_url


class Messages:
    def __init__(self, campaigns: dict[str, Campaign], policy: Policy):
        self.campaigns = campaigns
        self.policy = policy
        self.renderer = render.Renderer(campaigns)
        self.signer = TokenSigner()
        self.from_address = parseaddr(policy.sender.from_)[1]  # the envelope sender

    def prepare(self, conn: psycopg.Connection, batch: Batch) -> None:
        """The ledger rows of the batch's messages to send (`batch.work`), carrying the
        batch's claim, and what their rendering shares (the catalogue the claim loaded,
        recommendations, bestsellers: `batch.shared`)."""
        facts, now, to_send = batch.facts, batch.now, batch.to_send
        by_trigger = ledger.open_rows(
            conn,
            batch.claim,
            [
                (
                    r["campaign"],
                    r["customer_id"],
                    r["trigger_id"],
                    d.variant,
                    self.renderer.template_version(r["campaign"]),
                    email_hash_of(facts[r["customer_id"]].profile),
                    r["due_at"],
                )
                for r, d, _ in to_send
            ],
        )
        recs_by_customer = content.recommendations(conn, sorted({r["customer_id"] for r, _, _ in to_send}))
        fallback_recs = content.bestsellers(conn) if len(recs_by_customer) < len(to_send) else []
        shop = config.shop_url()
        batch.shared = {
            "catalogue": batch.catalogue,
            # converted once per batch, not per recipient
            "recs": {
                c: render.as_obj([render.product_view(p, shop) for p in ps])
                for c, ps in recs_by_customer.items()
            },
            "fallback_recs": render.as_obj([render.product_view(p, shop) for p in fallback_recs]),
            "issued": int(now.timestamp()),
            "public_url": config.public_url(),
            "mailto": f"mailto:unsubscribe@{config.mail_domain()}?subject=unsubscribe",
        }
        batch.work = [
            (r, d, payload, by_trigger[r["trigger_id"]], facts[r["customer_id"]].profile)
            for r, d, payload in to_send
        ]

    def build(self, r: dict, d: Decision, payload: dict, lr: dict, profile: dict, shared: dict) -> bytes:
        """One message, rendered for its recipient (raises deliver.PermanentDeliveryError
        when it cannot be built)."""
        campaign = self.campaigns[r["campaign"]]
        policy_sender = self.policy.sender
        token = self.signer.sign(r["customer_id"], email_hash_of(profile), campaign.name, shared["issued"])
        unsub = unsubscribe_url(token, shared["public_url"])
        recs = shared["recs"].get(r["customer_id"])
        ctx = render.make_context(
            campaign=campaign,
            customer=profile,
            payload=payload,
            products=shared["catalogue"],
            recommendations=recs or shared["fallback_recs"],
            recommendations_are_fallback=not recs,
            unsubscribe_url=unsub,
        )
        email = self.renderer.render(campaign.name, d.variant, ctx)
        return deliver.build_message(
            sender=policy_sender.from_,
            recipient=profile["email"],
            reply_to=policy_sender.reply_to,
            message_id=lr["message_id"],
            subject=email.subject,
            html=email.html,
            text=email.text,
            list_unsubscribe_url=unsub,
            list_unsubscribe_mailto=shared["mailto"],
            headers={
                "X-Emailp-Campaign": campaign.name,
                "X-Emailp-Variant": d.variant,
                "Feedback-ID": f"{d.variant}:{campaign.name}:emailp",
            },
        )
