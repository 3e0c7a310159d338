"""Campaign definitions: the shipped ones validate; broken ones fail with clear, complete errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from campaigns import assignment
from campaigns.schema import DefinitionError, load_campaigns, parse_duration

GOOD = """
name: {name}
trigger:
  kind: event
  events: ["Product Added"]
  delay: 30m
expiry: 1d
template: cart_abandonment
variants:
  - {{name: a, weight: 1, subject: "Hi"}}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_shipped_campaigns_validate():
    campaigns = load_campaigns()
    assert {"cart_abandonment", "browse_abandonment", "vip_offer", "churn_winback"} <= set(campaigns)
    cart = campaigns["cart_abandonment"]
    assert cart.trigger.delay == timedelta(minutes=30)
    assert cart.trigger.conditions[0].matches({"price": 10, "quantity": 2})
    assert not cart.trigger.conditions[0].matches({"price": 0})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7d", timedelta(days=7)),
        (45, timedelta(seconds=45)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


def test_every_problem_is_reported_with_file_and_field(tmp_path):
    write(tmp_path, "ok_one", GOOD.format(name="ok_one"))
    write(
        tmp_path,
        "broken",
        """
name: broken
trigger: {kind: event, events: [], delay: soon}
expiry: 1d
template: no_such_template
holdout: 0.9
variants:
  - {name: a, weight: 0, subject: "{{ unclosed"}
  - {name: a, weight: 1, subject: "x", colour: red}
""",
    )
    write(tmp_path, "wrong_name", GOOD.format(name="other_name"))
    with pytest.raises(DefinitionError) as err:
        load_campaigns(tmp_path)
    text = str(err.value)
    assert "broken.yaml: trigger.events: List should have at least 1 item" in text
    assert "broken.yaml: trigger.delay: 'soon' is not a duration" in text
    assert "broken.yaml: holdout: Input should be less than or equal to 0.5" in text
    assert "broken.yaml: variants.0.weight: Input should be greater than 0" in text
    assert "broken.yaml: variants.1.colour: unknown field" in text
    assert "wrong_name.yaml: name: 'other_name' must match the file name 'wrong_name'" in text
    assert "ok_one" not in text


def test_template_and_subject_syntax_checked(tmp_path):
    write(
        tmp_path,
        "c",
        GOOD.format(name="c")
        .replace("template: cart_abandonment", "template: nope")
        .replace('"Hi"', '"{{ x"'),
    )
    with pytest.raises(DefinitionError) as err:
        load_campaigns(tmp_path)
    assert "templates/nope.mjml does not exist" in str(err.value)
    assert "variants.0.subject: template syntax error" in str(err.value)


def test_yaml_syntax_error_is_reported(tmp_path):
    write(tmp_path, "bad", "name: [unclosed")
    with pytest.raises(DefinitionError, match="bad.yaml: not valid YAML"):
        load_campaigns(tmp_path)


def test_assignment_is_deterministic_and_follows_weights():
    cart = load_campaigns()["cart_abandonment"]
    first = [assignment.assign(cart, i)[0] for i in range(4000)]
    assert first == [assignment.assign(cart, i)[0] for i in range(4000)]
    share = {v: first.count(v) / len(first) for v in set(first)}
    assert abs(share["holdout"] - cart.holdout) < 0.02
    assert abs(share["reminder"] - share["urgency"]) < 0.04


def test_delay_scale_shortens_event_delays_only(monkeypatch):
    """CAMPAIGNS_DELAY_SCALE (the demo's live stage) scales delays when loaded; the files stay as shipped."""
    monkeypatch.setenv("CAMPAIGNS_DELAY_SCALE", "0.01")
    scaled = load_campaigns()
    assert scaled["cart_abandonment"].trigger.delay == timedelta(seconds=18)
    assert scaled["browse_abandonment"].trigger.delay == timedelta(seconds=36)
    assert scaled["vip_offer"].trigger == load_campaigns()["vip_offer"].trigger  # candidate: no delay
    assert scaled["cart_abandonment"].expiry == timedelta(hours=24)
    monkeypatch.setenv("CAMPAIGNS_DELAY_SCALE", "0")
    with pytest.raises(ValueError, match="CAMPAIGNS_DELAY_SCALE"):
        load_campaigns()
    monkeypatch.delenv("CAMPAIGNS_DELAY_SCALE")
    assert load_campaigns()["cart_abandonment"].trigger.delay == timedelta(minutes=30)
