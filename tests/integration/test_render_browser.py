"""Every campaign and variant, rendered in headless Chromium at 600 px and 375 px wide:
the screenshot is not blank and nothing overflows horizontally.

Needs Debian's chromium (`apt-get install chromium`); skipped without it.
Screenshots are kept under .local/screenshots/ for a human look.
"""

from __future__ import annotations

import io
import shutil

import pytest

from campaigns import preview, render
from campaigns.schema import load_campaigns
from warehouse import settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not shutil.which("chromium") and not __import__("os").path.exists(CHROMIUM),
        reason="Debian's chromium is not installed",
    ),
]

CAMPAIGNS = load_campaigns()
CASES = [(c.name, v.name) for c in CAMPAIGNS.values() for v in c.variants]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def rendered(name: str, variant: str, long_names: bool) -> str:
    payload = preview.sample_payload()
    customer = {"customer_id": 1, "first_name": "Maximiliana-Alexandrina" if long_names else None}
    if long_names:
        for item in payload["items"]:
            item["name"] = "Extraordinarily long product name without spaces " + "Supercalifragilistic" * 2
    return (
        render.Renderer({name: CAMPAIGNS[name]})
        .render(
            name,
            variant,
            render.make_context(
                campaign=CAMPAIGNS[name],
                customer=customer,
                payload=payload,
                recommendations=preview.sample_products(),
                recommendations_are_fallback=True,
                unsubscribe_url="https://shop.example/unsubscribe?token=x",
            ),
        )
        .html
    )


def not_blank(png: bytes) -> float:
    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(png)).convert("L")
    return ImageStat.Stat(img).stddev[0]


@pytest.mark.parametrize(("name", "variant"), CASES)
@pytest.mark.parametrize("width", [600, 375])
def test_renders_without_overflow(browser, name, variant, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    # no network: images fall back to their alt text, as in a client that blocks images
    page.route(
        "**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_()
    )
    try:
        for long_names in (False, True):
            page.set_content(rendered(name, variant, long_names), wait_until="load")
            overflow = page.evaluate(
                """() => {
                    const w = document.documentElement.clientWidth;
                    const wide = [...document.body.querySelectorAll('*')]
                        .filter(e => e.getClientRects().length && getComputedStyle(e).overflow !== 'hidden')
                        .filter(e => e.getBoundingClientRect().right > w + 1)
                        .map(e => e.tagName + '.' + e.className);
                    return {scroll: document.documentElement.scrollWidth, width: w, wide: wide.slice(0, 5)};
                }"""
            )
            assert overflow["scroll"] <= overflow["width"], (name, variant, width, overflow)
            assert not overflow["wide"], (name, variant, width, overflow)
            out = (
                settings.LOCAL_DIR
                / "screenshots"
                / f"{name}.{variant}.{width}{'.long' if long_names else ''}.png"
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            png = page.screenshot(full_page=True, path=str(out))
            assert not_blank(png) > 10, f"{out} looks blank"
            height = page.evaluate("document.documentElement.scrollHeight")
            assert height > 400, height
    finally:
        page.close()
