"""Rendering: compiled once per template version, personalised safely, with fallbacks."""

from __future__ import annotations

import re
import time

import markupsafe
import pytest

from campaigns import preview, render
from campaigns.schema import load_campaigns

CAMPAIGNS = load_campaigns()


@pytest.fixture(scope="module")
def renderer():
    return render.Renderer(CAMPAIGNS)


def ctx(campaign, **kw):
    defaults = dict(
        customer={"customer_id": 7, "first_name": "Ana"},
        payload=preview.sample_payload(),
        recommendations=preview.sample_products(),
        unsubscribe_url="https://shop.example/unsubscribe?token=abc",
    )
    defaults.update(kw)
    return render.make_context(campaign=CAMPAIGNS[campaign], **defaults)


@pytest.mark.parametrize("name", sorted(CAMPAIGNS))
def test_every_campaign_and_variant_renders(renderer, name):
    for v in CAMPAIGNS[name].variants:
        email = renderer.render(name, v.name, ctx(name))
        assert email.subject and "{{" not in email.subject and "{%" not in email.html
        assert str(markupsafe.escape(email.preheader)) in email.html
        assert (
            "https://shop.example/unsubscribe?token=abc" in email.html
            and email.text.count("unsubscribe?token=abc") == 1
        )
        assert "<html" in email.html and "<mj-" not in email.html
        assert email.template_version == renderer.template_version(name)


def test_links_carry_utm_parameters(renderer):
    email = renderer.render("cart_abandonment", "urgency", ctx("cart_abandonment"))
    links = [
        u for u in re.findall(r'href="(https://shop\.example[^"]*)"', email.html) if "/unsubscribe" not in u
    ]
    assert links and all("utm_source=emailp" in u and "utm_campaign=cart_abandonment" in u for u in links)
    assert any("utm_content=urgency.hero_cta" in u for u in links)
    assert "utm_medium=email" in email.text


def test_autoescape_and_sandbox(renderer):
    email = renderer.render(
        "cart_abandonment",
        "reminder",
        ctx("cart_abandonment", customer={"customer_id": 1, "first_name": "<script>alert(1)</script>"}),
    )
    assert "<script>alert(1)" not in email.html and "&lt;script&gt;" in email.html
    assert email.subject.startswith("<script>")  # subjects are plain text, not HTML


def test_fallbacks_no_first_name_no_recommendations_no_cart(renderer):
    email = renderer.render(
        "cart_abandonment",
        "reminder",
        ctx("cart_abandonment", customer={"customer_id": 1, "first_name": None}, recommendations=[]),
    )
    assert email.subject == "You left something in your cart"
    assert "Hello," in email.text and "Hi None" not in email.text
    assert "Picked for you" not in email.html and "Bestsellers" not in email.html
    vip = renderer.render(
        "vip_offer", "gift", ctx("vip_offer", payload={}, recommendations_are_fallback=True)
    )
    assert "Bestsellers right now" in vip.html and "In your cart" not in vip.html


def test_cart_lines_and_totals(renderer):
    email = renderer.render("cart_abandonment", "reminder", ctx("cart_abandonment"))
    assert "Oak desk lamp" in email.html and "2 x $14.00" in email.text and "Total: $107.00" in email.text
    # cart products are not recommended again
    assert email.text.count("Oak desk lamp") == 1


def test_compiled_once_per_template_version(tmp_path):
    (tmp_path / "partials").mkdir()
    (tmp_path / "layouts").mkdir()
    (tmp_path / "t.mjml").write_text(
        "<mjml><mj-body><mj-section><mj-column><mj-text>{{ greeting }} v1</mj-text></mj-column></mj-section></mj-body></mjml>"
    )
    (tmp_path / "t.txt").write_text("{{ greeting }}")
    a = render.compile_template("t", tmp_path)
    assert render.compile_template("t", tmp_path) is a
    (tmp_path / "t.mjml").write_text(a.mjml_source.replace("v1", "v2"))
    b = render.compile_template("t", tmp_path)
    assert b.version != a.version and "v2" in b.html.render(greeting="x")


def test_renders_fast_enough(renderer):
    c = ctx("cart_abandonment")
    t0 = time.process_time()
    for _ in range(500):
        renderer.render("cart_abandonment", "reminder", c)
    per_s = 500 / (time.process_time() - t0)
    assert per_s > 2000, per_s  # the benchmark's target is 5,000/s per core; leave room for a busy CI
