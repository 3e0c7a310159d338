"""Campaigns as code: one YAML file per campaign, validated with clear errors.

    from campaigns.schema import load_campaigns
    campaigns = load_campaigns()          # {name: Campaign}, raises DefinitionError

`python -m campaigns validate` prints every problem of every file at once, each as
`<file>: <field path>: <message>`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from campaigns import config

_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")
SLUG = r"^[a-z][a-z0-9_]*$"


def parse_duration(value: Any) -> timedelta:
    """'30m', '1h30m', '7d', '45s' (or a number of seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m and any(m.groups()):
            d, h, mi, s = (int(g or 0) for g in m.groups())
            return timedelta(days=d, hours=h, minutes=mi, seconds=s)
    raise ValueError(f"{value!r} is not a duration: write e.g. '30m', '1h30m', '7d' or '45s'")


Duration = Annotated[timedelta, Field(json_schema_extra={"format": "duration"})]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Model):
    """A test on one event property, e.g. {property: value, op: gt, value: 0}."""

    property: str
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists"]
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list as value")
        if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float):
            raise ValueError(f"op {self.op!r} needs a number as value")
        return self

    def matches(self, properties: dict) -> bool:
        actual = _lookup(properties, self.property)
        if self.op == "exists":
            return (actual is not None) == (self.value is not False)
        if actual is None:
            return False
        try:
            if self.op == "eq":
                return actual == self.value
            if self.op == "ne":
                return actual != self.value
            if self.op == "in":
                return actual in self.value
            if self.op == "not_in":
                return actual not in self.value
            number = float(actual)
        except (TypeError, ValueError):
            return False
        return {
            "gt": number > self.value,
            "gte": number >= self.value,
            "lt": number < self.value,
            "lte": number <= self.value,
        }[self.op]


def _lookup(properties: dict, path: str) -> Any:
    """Dotted lookup; `value` falls back to price * quantity (Segment product events)."""
    node: Any = properties
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None and path == "value":
        try:
            return float(properties.get("price")) * float(properties.get("quantity", 1) or 1)
        except (TypeError, ValueError):
            return None
    return node


class EventTrigger(_Model):
    """A timer per (customer, key), moved by every matching event, cancelled by `cancel_on`."""

    kind: Literal["event"]
    events: list[str] = Field(min_length=1)
    conditions: list[Condition] = []
    key: str | None = Field(None, description="event property that separates timers, e.g. cart_id")
    key_fallback: Literal["day", "customer"] = "day"
    delay: Duration
    after: Literal["last_activity", "first_activity"] = "last_activity"
    cancel_on: list[str] = []
    update_on: list[str] = Field([], description="events that change the payload without moving the timer")

    _parse_delay = field_validator("delay", mode="before")(parse_duration)


class ScoreFallback(_Model):
    """When the dbt mart is absent: pick customers from ml.customer_segments."""

    score: str | None = None
    min: float | None = None
    segment: str | None = None
    period: Literal["week", "month"] = "month"

    @model_validator(mode="after")
    def _something_to_select(self) -> ScoreFallback:
        if not self.segment and not (self.score and self.min is not None):
            raise ValueError("give a segment, or a score with a min")
        return self


class CandidateTrigger(_Model):
    """Batch campaigns: rows of marts.trigger_candidates with `candidate_type`; when the
    mart is absent (or no candidate_type is given) customers picked by `fallback`
    from ml.customer_segments."""

    kind: Literal["candidate"]
    candidate_type: str | None = None
    fallback: ScoreFallback | None = None

    @model_validator(mode="after")
    def _has_a_source(self) -> CandidateTrigger:
        if not self.candidate_type and self.fallback is None:
            raise ValueError(
                "give a candidate_type (marts.trigger_candidates) or a fallback (ml.customer_segments)"
            )
        return self


class Audience(_Model):
    consent: Literal["required"] = "required"
    segments: list[str] = Field([], description="send only to these segment labels (any of)")
    exclude_segments: list[str] = []


class Variant(_Model):
    name: str = Field(pattern=SLUG)
    weight: float = Field(gt=0)
    subject: str = Field(min_length=1, max_length=200)
    preheader: str = Field("", max_length=200)
    copy_: dict[str, str] = Field(
        {}, alias="copy", description="texts the template shows: headline, body, cta"
    )


class Utm(_Model):
    source: str = "emailp"
    medium: str = "email"
    campaign: str | None = None


class Campaign(_Model):
    name: str = Field(pattern=SLUG)
    description: str = ""
    enabled: bool = True
    priority: int = Field(0, description="higher wins when caps allow only one of several due triggers")
    trigger: EventTrigger | CandidateTrigger = Field(discriminator="kind")
    expiry: Duration = Field(description="skip a trigger this long after it first became due")
    audience: Audience = Audience()
    template: str = Field(pattern=SLUG)
    variants: list[Variant] = Field(min_length=1)
    holdout: float = Field(0.0, ge=0.0, le=0.5)
    experiment: str = Field("v1", pattern=r"^[A-Za-z0-9_.-]+$", description="salt of the assignment")
    utm: Utm = Utm()
    respect_quiet_hours: bool = True

    _parse_expiry = field_validator("expiry", mode="before")(parse_duration)

    @field_validator("variants")
    @classmethod
    def _unique_variant_names(cls, variants: list[Variant]) -> list[Variant]:
        names = [v.name for v in variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique: {', '.join(dupes)} repeated")
        if "holdout" in names:
            raise ValueError("'holdout' is reserved for the held-out group")
        return variants

    @property
    def utm_campaign(self) -> str:
        return self.utm.campaign or self.name

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(
            f"campaign {self.name} has no variant {name!r}: {', '.join(v.name for v in self.variants)}"
        )


class FrequencyCap(_Model):
    max: int = Field(ge=1)
    per: Duration

    _parse_per = field_validator("per", mode="before")(parse_duration)


class QuietHours(_Model):
    start: str = Field(pattern=r"^\d{2}:\d{2}$")
    end: str = Field(pattern=r"^\d{2}:\d{2}$")


class Sender(_Model):
    from_: str = Field(alias="from")
    reply_to: str | None = None


class Policy(_Model):
    """Rules across all campaigns: frequency caps, quiet hours, sender."""

    frequency_caps: list[FrequencyCap] = []
    quiet_hours: QuietHours | None = None
    sender: Sender
    max_send_attempts: int = Field(5, ge=1)


class DefinitionError(ValueError):
    """Every problem found, one per line: `<file>: <field path>: <message>`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid campaign definitions:\n  " + "\n  ".join(problems))


def _format(path: Path, error: ValidationError) -> list[str]:
    out = []
    for e in error.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("event", "candidate")) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif e["type"] == "union_tag_invalid":
            msg = "trigger.kind must be 'event' or 'candidate'"
        out.append(f"{path.name}: {loc}: {msg}")
    return out


def _read_yaml(path: Path) -> tuple[Any, list[str]]:
    try:
        return yaml.safe_load(path.read_text()), []
    except yaml.YAMLError as exc:
        return None, [f"{path.name}: not valid YAML: {exc}".replace("\n", " ")]


def _check_templates(path: Path, campaign: Campaign) -> list[str]:
    from campaigns import render

    problems = []
    for suffix in (".mjml", ".txt"):
        if not (config.TEMPLATES_DIR / f"{campaign.template}{suffix}").exists():
            problems.append(f"{path.name}: template: templates/{campaign.template}{suffix} does not exist")
    for i, v in enumerate(campaign.variants):
        for field in ("subject", "preheader"):
            err = render.syntax_error(getattr(v, field))
            if err:
                problems.append(f"{path.name}: variants.{i}.{field}: template syntax error: {err}")
    return problems


def load_policy(path: Path | None = None) -> Policy:
    path = path or config.policy_path()
    data, problems = _read_yaml(path)
    if problems:
        raise DefinitionError(problems)
    try:
        return Policy.model_validate(data or {})
    except ValidationError as exc:
        raise DefinitionError(_format(path, exc)) from None


def _load(paths: list[Path]) -> dict[str, Campaign]:
    problems: list[str] = []
    campaigns: dict[str, Campaign] = {}
    for path in paths:
        data, errs = _read_yaml(path)
        problems += errs
        if errs:
            continue
        if not isinstance(data, dict):
            problems.append(
                f"{path.name}: (top level): expected a mapping of fields, got {type(data).__name__}"
            )
            continue
        try:
            campaign = Campaign.model_validate(data)
        except ValidationError as exc:
            problems += _format(path, exc)
            continue
        if campaign.name != path.stem:
            problems.append(f"{path.name}: name: {campaign.name!r} must match the file name {path.stem!r}")
        problems += _check_templates(path, campaign)
        campaigns[campaign.name] = campaign
    if problems:
        raise DefinitionError(problems)
    return campaigns


def load_campaigns(directory: Path | None = None, *, include_disabled: bool = False) -> dict[str, Campaign]:
    """The campaign definitions; event-trigger delays multiplied by CAMPAIGNS_DELAY_SCALE when set."""
    directory = directory or config.definitions_dir()
    paths = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    campaigns = _load(paths)
    scale = config.delay_scale()
    if scale != 1.0:
        campaigns = {n: scaled_delay(c, scale) for n, c in campaigns.items()}
    return {n: c for n, c in campaigns.items() if c.enabled or include_disabled}


def scaled_delay(campaign: Campaign, scale: float) -> Campaign:
    """A copy whose event-trigger delay is `scale` times the defined one (whole milliseconds)."""
    trig = campaign.trigger
    if not isinstance(trig, EventTrigger):
        return campaign
    delay = timedelta(milliseconds=round(trig.delay / timedelta(milliseconds=1) * scale))
    return campaign.model_copy(update={"trigger": trig.model_copy(update={"delay": delay})})
