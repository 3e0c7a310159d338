"""Render personalised emails: MJML compiled once per template version, Jinja per recipient.

Build stage: templates/<name>.mjml is assembled from layouts/ and partials/ with
square-bracket Jinja delimiters (`[% include %]`), compiled by mjml-python (MRML),
and the resulting HTML becomes a sandboxed Jinja template with autoescape. The
template version is a hash of the assembled sources. Per recipient only Jinja
runs, which is what makes thousands of renders per second per core possible.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import jinja2
from jinja2 import pass_context
from jinja2.sandbox import SandboxedEnvironment

from campaigns import config


def _build_env(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        block_start_string="[%",
        block_end_string="%]",
        variable_start_string="[[",
        variable_end_string="]]",
        comment_start_string="[#",
        comment_end_string="#]",
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def money(value: Any, symbol: str = "$") -> str:
    if value is None or value == "":
        return ""
    try:
        return f"{symbol}{Decimal(str(value)):,.2f}"
    except Exception:  # noqa: BLE001 - bad data shows as-is rather than failing a send
        return str(value)


@pass_context
def utm(ctx: Any, url: Any, content: str = "link") -> str:
    """Append UTM parameters; `utm_content` names the link and the variant."""
    if not url:
        return ""
    url = str(url)
    prefix = ctx.get("_utm_prefix")  # "utm_source=..&utm_campaign=..&utm_content=<variant>."
    if not prefix:
        return url
    return f"{url}{'&' if '?' in url else '?'}{prefix}{content}"


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with a fast path for `Obj` records: their data attributes are
    plain values we put there, so the generic safety checks can be skipped."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is Obj and attribute[:1] != "_":
            d = obj.__dict__
            if attribute in d:
                return d[attribute]
        return super().getattr(obj, attribute)


def _sandbox(autoescape: bool) -> SandboxedEnvironment:
    env = _Sandbox(autoescape=autoescape, trim_blocks=not autoescape, lstrip_blocks=not autoescape)
    env.filters["utm"] = utm
    env.filters["money"] = money
    return env


class Obj(SimpleNamespace):
    """Template-facing record: attribute look-ups succeed without the dict fallback,
    which makes the sandbox's getattr about twice as fast as on dicts."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def as_obj(value: Any) -> Any:
    if isinstance(value, dict):
        return Obj(**{k: as_obj(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return [as_obj(v) for v in value]
    return value


COPY_KEYS = ("headline", "body", "cta", "code")

HTML_ENV = _sandbox(autoescape=True)
TEXT_ENV = _sandbox(autoescape=False)


def syntax_error(source: str) -> str | None:
    """The Jinja syntax error of a subject or preheader, or None."""
    try:
        TEXT_ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return f"{exc.message} (line {exc.lineno})"
    return None


@dataclass(frozen=True)
class CompiledTemplate:
    name: str
    version: str
    html: jinja2.Template
    text: jinja2.Template
    mjml_source: str = field(repr=False)


_compiled: dict[tuple[str, str], CompiledTemplate] = {}
_lock = threading.Lock()


def assemble(name: str, templates_dir: Path | None = None) -> tuple[str, str]:
    env = _build_env(templates_dir or config.TEMPLATES_DIR)
    try:
        return env.get_template(f"{name}.mjml").render(), env.get_template(f"{name}.txt").render()
    except jinja2.TemplateNotFound as exc:
        raise FileNotFoundError(f"template {exc.name} not found under templates/") from None


def compile_template(name: str, templates_dir: Path | None = None) -> CompiledTemplate:
    """Compile (or fetch from the cache) the current version of template `name`."""
    import mjml

    mjml_source, text_source = assemble(name, templates_dir)
    version = hashlib.sha256((mjml_source + "\0" + text_source).encode()).hexdigest()[:12]
    key = (name, version)
    with _lock:
        if key in _compiled:
            return _compiled[key]
    html = mjml.mjml2html(mjml_source)
    compiled = CompiledTemplate(
        name=name,
        version=version,
        html=HTML_ENV.from_string(html),
        text=TEXT_ENV.from_string(text_source),
        mjml_source=mjml_source,
    )
    with _lock:
        _compiled[key] = compiled
    return compiled


@dataclass
class RenderedEmail:
    campaign: str
    variant: str
    template_version: str
    subject: str
    preheader: str
    html: str
    text: str


class Renderer:
    """Holds compiled templates and variant strings for one batch (or one process)."""

    def __init__(self, campaigns: dict, templates_dir: Path | None = None):
        self.campaigns = campaigns
        self.templates: dict[str, CompiledTemplate] = {}
        self._strings: dict[tuple[str, str, str], jinja2.Template] = {}
        self._utm: dict[tuple[str, str], str] = {}
        self._copy: dict[tuple[str, str], Obj] = {}
        for campaign in campaigns.values():
            if campaign.template not in self.templates:
                self.templates[campaign.template] = compile_template(campaign.template, templates_dir)
            for v in campaign.variants:
                self._copy[(campaign.name, v.name)] = Obj(**{**dict.fromkeys(COPY_KEYS), **v.copy_})
                # one render for both: \x1f cannot appear in either
                self._strings[(campaign.name, v.name, "")] = TEXT_ENV.from_string(
                    f"{v.subject}\x1f{v.preheader}"
                )
            u = campaign.utm
            for v in campaign.variants:
                self._utm[(campaign.name, v.name)] = (
                    f"utm_source={quote(u.source)}&utm_medium={quote(u.medium)}"
                    f"&utm_campaign={quote(campaign.utm_campaign)}&utm_content={quote(v.name)}."
                )

    def template_version(self, campaign_name: str) -> str:
        return self.templates[self.campaigns[campaign_name].template].version

    def render(self, campaign_name: str, variant_name: str, context: dict[str, Any]) -> RenderedEmail:
        campaign = self.campaigns[campaign_name]
        campaign.variant(variant_name)  # a clear KeyError for an unknown variant
        compiled = self.templates[campaign.template]
        heading_t = self._strings[(campaign_name, variant_name, "")]
        ctx = dict(context)
        ctx["variant"] = variant_name
        ctx["campaign"] = campaign_name
        ctx["copy"] = self._copy[(campaign_name, variant_name)]
        ctx["_utm_prefix"] = self._utm[(campaign_name, variant_name)]
        subject, _, preheader = heading_t.render(ctx).partition("\x1f")
        subject = " ".join(subject.split())
        preheader = " ".join(preheader.split())
        ctx["subject"] = subject
        ctx["preheader"] = preheader
        return RenderedEmail(
            campaign=campaign_name,
            variant=variant_name,
            template_version=compiled.version,
            subject=subject,
            preheader=preheader,
            html=compiled.html.render(ctx),
            text=compiled.text.render(ctx),
        )


def product_view(product: dict[str, Any], shop_url: str | None = None) -> dict[str, Any]:
    """A product as templates see it, with its shop URL."""
    shop_url = shop_url or config.shop_url()
    pid = product.get("product_id")
    return {
        "product_id": pid,
        "sku": product.get("sku"),
        "name": product.get("name") or product.get("sku") or "A product you liked",
        "price": product.get("price"),
        "quantity": product.get("quantity") or 1,
        "image_url": product.get("image_url") or f"{shop_url}/static/placeholder.png",
        "url": product.get("url") or (f"{shop_url}/products/{pid}" if pid is not None else shop_url),
        "category": product.get("category"),
    }


def make_context(
    *,
    campaign: Any,
    customer: dict[str, Any],
    payload: dict[str, Any] | None = None,
    products: dict[Any, dict[str, Any]] | None = None,
    recommendations: list[dict[str, Any]] | None = None,
    recommendations_are_fallback: bool = False,
    unsubscribe_url: str = "",
    segment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The per-recipient template context, with a fallback for every optional block."""
    shop = config.shop_url()
    payload = payload or {}
    products = products or {}
    first_name = (customer.get("first_name") or "").strip() or None

    def enrich(item: dict[str, Any]) -> dict[str, Any]:
        catalogue = products.get(_int_or_none(item.get("product_id"))) or {}
        merged = {**catalogue, **{k: v for k, v in item.items() if v not in (None, "")}}
        return product_view(merged, shop)

    cart_items = [enrich(i) for i in payload.get("items", [])]
    cart_total = payload.get("cart_total")
    if cart_total is None and cart_items:
        try:
            cart_total = sum(
                Decimal(str(i["price"])) * int(i["quantity"]) for i in cart_items if i["price"] is not None
            )
        except Exception:  # noqa: BLE001
            cart_total = None
    cart = {
        "lines": cart_items,
        "item_count": sum(int(i["quantity"] or 1) for i in cart_items),
        "total": cart_total,
        "url": f"{shop}/cart",
    }
    viewed = [enrich(i) for i in payload.get("viewed", [])]
    seen = {i["product_id"] for i in cart_items + viewed}
    recs = [
        r if type(r) is Obj else as_obj(product_view(r, shop))
        for r in (recommendations or [])
        if (r.product_id if type(r) is Obj else r.get("product_id")) not in seen
    ]
    if campaign.trigger.kind == "event" and cart_items:
        cta_url = cart["url"]
    elif viewed:
        cta_url = viewed[0]["url"]
    else:
        cta_url = f"{shop}/new"
    return {
        "customer": Obj(customer_id=customer.get("customer_id"), first_name=first_name),
        "first_name": first_name,
        "greeting_name": first_name or "there",
        "greeting": f"Hi {first_name}," if first_name else "Hello,",
        "cart": as_obj(cart),
        "viewed": as_obj(viewed),
        "recommendations": recs[:3],
        "recommendations_title": "Bestsellers right now"
        if recommendations_are_fallback
        else "Picked for you",
        "segment": as_obj(segment or {}),
        "shop_url": shop,
        "cta_url": cta_url,
        "unsubscribe_url": unsubscribe_url,
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
