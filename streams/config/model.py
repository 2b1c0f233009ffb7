"""The YAML configuration: flags, their variants, guardrails and service settings.

``load_config(path)`` returns a validated :class:`Config` or raises
:class:`~driftswitch.streams.contract.errors.ConfigError` listing *every* problem found, each as
``file:line: path.inside.file: what was expected`` — the line comes from the YAML node the path
points at. The shape of ``flags`` is the contract (fields may be added, none renamed)::

    flags:
      ranker:
        default: control
        variants:
          control:   {weight: 90, value: ranker-v1}
          candidate: {weight: 10, value: ranker-v2}
        guardrails:
          - name: candidate-accuracy
            variant: candidate
            metric: accuracy
            detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
            min_samples: 200
            action: kill
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.fields import FieldInfo

from driftswitch.detectors import registry
from driftswitch.streams.config import budget
from driftswitch.streams.contract import targeting
from driftswitch.streams.contract.errors import ConfigError
from driftswitch.streams.contract.events import Name


class Metric(StrEnum):
    """What a guardrail watches. See :data:`METRIC_TRAITS` for what each one feeds its detector."""

    ACCURACY = "accuracy"
    ERROR_RATE = "error_rate"
    LATENCY_MS = "latency_ms"
    ABS_ERROR = "abs_error"
    SQUARED_ERROR = "squared_error"
    SCORE = "score"
    FEATURE = "feature"
    INTERLEAVING = "interleaving"


@dataclass(frozen=True)
class MetricTraits:
    """How a metric turns into detector input."""

    #: One of ``driftswitch.detectors.registry.INPUT_KINDS``.
    input: str
    #: Needs a joined outcome (a label) before it can be scored.
    needs_label: bool
    #: For two-sample comparisons: is a larger value better?
    higher_is_better: bool
    description: str


METRIC_TRAITS: dict[Metric, MetricTraits] = {
    Metric.ACCURACY: MetricTraits(
        "bernoulli", True, True, "correct predictions; detectors see 1 for each wrong one"
    ),
    Metric.ERROR_RATE: MetricTraits(
        "bernoulli", False, False, "failed inferences (prediction `error` set); 1 = failed"
    ),
    Metric.LATENCY_MS: MetricTraits("continuous", False, False, "inference latency, milliseconds"),
    Metric.ABS_ERROR: MetricTraits("continuous", True, False, "|prediction - label| (regression)"),
    Metric.SQUARED_ERROR: MetricTraits(
        "continuous", True, False, "(prediction - label)^2 (regression)"
    ),
    Metric.SCORE: MetricTraits(
        "distribution", False, False, "distribution of `score`, against a reference window"
    ),
    Metric.FEATURE: MetricTraits(
        "distribution", False, False, "distribution of one numeric feature (`feature: name`)"
    ),
    Metric.INTERLEAVING: MetricTraits(
        "preference",
        True,
        True,
        "team-draft interleaved impressions against `compare_to`: a win, loss or tie for the "
        "variant per impression, from the clicks",
    ),
}


class GuardrailAction(StrEnum):
    """What a breached guardrail does."""

    WARN = "warn"  # alert only, no state change
    HOLD = "hold"  # pause rollout advances
    SHIFT = "shift"  # move `shift_by` weight from the variant to the default
    KILL = "kill"  # weight 0, killed; traffic goes to the default


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as ``"500ms"``, ``"30s"``, ``"10m"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m, 2h or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(
            f"expected a duration such as 30s, 10m, 2h or a number of seconds, got {value!r}"
        )
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _DURATION.pattern},
            ],
            "description": "Seconds, or a duration such as 500ms, 30s, 10m, 2h, 1d.",
        }
    ),
]
Rate = Annotated[
    float,
    BeforeValidator(budget.parse_rate),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": budget._RATE.pattern},
            ],
            "description": "Events per second, or a rate such as 40/s, 2400/m, 100000/d.",
        }
    ),
]
LabelValue = StrictBool | StrictInt | StrictFloat | StrictStr


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariantConfig(_Model):
    """One variant of a flag."""

    weight: int = Field(ge=0, le=100, description="Percent of traffic; served weights sum to 100.")
    value: JsonValue = Field(description="What clients receive for this variant.")
    shadow: bool = Field(
        False, description="Shadow variant: sees traffic via `served: false`, serves no one."
    )


class DetectorSpec(BaseModel):
    """``{kind: NAME, **params}``; parameters are validated by the detector itself."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = Field(description="A registered detector kind (driftswitch validate lists them).")

    def params(self) -> dict[str, Any]:
        """The parameters, without ``kind``."""
        return dict(self.model_extra or {})

    def spec(self) -> dict[str, Any]:
        """``{"kind": ..., **params}``, what ``registry.create`` takes."""
        return {"kind": self.kind, **self.params()}


class Guardrail(_Model):
    """A rule: when ``detector`` decides ``metric`` of ``variant`` got worse, do ``action``."""

    name: Name
    variant: str = Field(description="The variant this guardrail watches and acts on.")
    metric: Metric = Field(description="What is measured.")
    detector: DetectorSpec = Field(description="`{kind: NAME, **params}`.")
    compare_to: str | None = Field(
        None, description="Compare against this variant (two-sample detectors only)."
    )
    feature: str | None = Field(None, description="The feature, for `metric: feature`.")
    min_samples: int = Field(
        100, ge=0, description="No decision before this many samples of the variant."
    )
    action: GuardrailAction = Field(description="warn | hold | shift | kill.")
    cooldown: Duration = Field(
        300.0, description="After acting, this guardrail waits this long before acting again."
    )
    shift_by: int = Field(
        10, ge=1, le=100, description="For `action: shift`: weight moved to the default."
    )
    false_alarm_every: Duration | None = Field(
        None,
        description=(
            "The false-alarm budget as a duration (e.g. 90d): sets the detector's `arl0` to "
            "this duration times `expected_rate`."
        ),
    )
    expected_rate: Rate | None = Field(
        None,
        description=(
            "Events per second expected to reach this guardrail (labelled events of the variant "
            "for label metrics), e.g. 40/s: turns `false_alarm_every` into `arl0`."
        ),
    )
    segment_by: list[str] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description=(
            "Watch each segment on its own, e.g. [attributes.region]: one detector per value "
            "(per combination of values); a breach acts on that segment only."
        ),
    )
    max_segments: int = Field(
        50,
        ge=1,
        le=1000,
        description=(
            "With `segment_by`: segments with their own detector; later values (and missing or "
            "non-string ones) are counted in one `other` bucket."
        ),
    )
    metric_segments: list[str] = Field(
        default_factory=list,
        max_length=50,
        description=(
            "With `segment_by`: segment values exported as Prometheus labels (joined with `,` "
            "for several attributes); every other segment is exported as `other`."
        ),
    )


class OnHarm(StrEnum):
    """What a rollout does when its candidate is shown to be worse than control."""

    KILL = "kill"  # kill the candidate; its weight returns to `compare_to`
    PREVIOUS = "previous"  # go back one step (from the first step: weight 0, rollout stopped)


#: Metrics a rollout can compare (two-sample ``sequential`` input: bernoulli or continuous; or
#: interleaved impressions, compared by the ``interleaving`` detector).
ROLLOUT_METRICS = (
    Metric.ACCURACY,
    Metric.ERROR_RATE,
    Metric.LATENCY_MS,
    Metric.ABS_ERROR,
    Metric.SQUARED_ERROR,
    Metric.INTERLEAVING,
)


class RolloutSegment(_Model):
    """One segment of a rollout by segment: who it covers, as a flagd JSON Logic condition."""

    name: Name
    when: dict[str, JsonValue] | None = Field(
        None,
        description="JSON Logic condition over the evaluation context, e.g. "
        "`{in: [{var: region}, [nz]]}`; omitted on the last segment: everyone.",
    )


class RolloutConfig(_Model):
    """A progressive rollout of one candidate variant, gated by evidence at every step.

    The candidate's weight follows ``steps`` (percent of traffic); the rest goes to
    ``compare_to``. A step advances when the candidate has ``min_samples`` matured samples in it,
    ``min_duration`` has passed, and the anytime-valid ``sequential`` comparison against
    ``compare_to`` declares non-inferiority (see :mod:`driftswitch.streams.pipeline.rollout`).
    """

    variant: str = Field(description="The candidate variant that ramps up.")
    compare_to: str | None = Field(
        None,
        description="The control it is compared to and takes traffic from (default: the "
        "flag's default variant).",
    )
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        min_length=1,
        description="Percent of traffic for the candidate at each step, strictly increasing, "
        "e.g. [1, 5, 25, 50, 100]. A served candidate's configured weight is the first step.",
    )
    min_samples: int = Field(
        200, ge=1, description="Gate: matured samples of the candidate within the step."
    )
    min_duration: Duration = Field(
        0.0, description="Gate: event time spent in the step before it may advance."
    )
    max_duration: Duration | None = Field(
        None,
        description="A step still inconclusive after this long holds the rollout (paused) and "
        "warns; unset: wait indefinitely.",
    )
    metric: Metric = Field(
        Metric.ACCURACY,
        description="What is compared: accuracy, error_rate, latency_ms, abs_error or "
        "squared_error.",
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Error rate of the whole rollout's anytime-valid comparisons, spent over "
        "its phases (phase k: alpha * 6 / (pi^2 k^2), so any number of phases stays within it).",
    )
    margin: float = Field(
        0.0,
        ge=0,
        description="Non-inferiority margin in the metric's units (0.01 = one accuracy point): "
        "worse by less is acceptable, worse by more is harm.",
    )
    on_harm: OnHarm = Field(OnHarm.KILL, description="kill | previous: what harm at any step does.")
    promote_shadow: bool = Field(
        False,
        description="The candidate is a shadow variant: promote it to the first step once it "
        "proves non-inferior on matured outcomes.",
    )
    segments: list[RolloutSegment] | None = Field(
        None,
        min_length=1,
        max_length=20,
        description="Roll out segment by segment, in this order (e.g. internal users, then "
        "region nz, then everyone): the steps run in each segment on its own outcomes; a "
        "segment that reaches the last step keeps that share and the next one starts.",
    )

    def control(self, flag: FlagConfig) -> str:
        """The variant the candidate is compared to and takes its traffic from."""
        return self.compare_to if self.compare_to is not None else flag.default


class HookFormat(StrEnum):
    """The payload shape a webhook receives (see :mod:`driftswitch.streams.service.hooks`)."""

    GENERIC = "generic"  # the flag-change or alert event itself, HMAC-signed
    SLACK = "slack"  # Slack incoming-webhook message with blocks
    PAGERDUTY = "pagerduty"  # PagerDuty Events API v2: trigger on kill/shift, resolve on restore
    ALERTMANAGER = "alertmanager"  # Alertmanager POST /api/v2/alerts body


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class HookConfig(_Model):
    """A webhook called on every flag change and every ``warn`` alert of the flags it covers.

    Secrets never sit in the file: ``secret_env`` (and ``url_env``) name environment variables
    read when the worker starts.
    """

    model_config = ConfigDict(
        json_schema_extra={
            # The cross-field rules of `_check`, for non-Python validators of the schema.
            "oneOf": [{"required": ["url"]}, {"required": ["url_env"]}],
            "if": {"properties": {"format": {"enum": ["generic", "pagerduty"]}}},
            "then": {"required": ["secret_env"]},
        }
    )

    name: str | None = Field(
        None,
        max_length=64,
        description="Label for logs and metrics; defaults to `<flag or global>[index]`.",
    )
    url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="Where to POST; for `alertmanager`, the base URL (`/api/v2/alerts` is added).",
    )
    url_env: str | None = Field(
        None,
        pattern=_ENV_NAME,
        description="Environment variable holding the URL instead (a Slack webhook URL is a "
        "secret); exactly one of `url` and `url_env`.",
    )
    format: HookFormat = Field(
        HookFormat.GENERIC, description="generic | slack | pagerduty | alertmanager."
    )
    secret_env: str | None = Field(
        None,
        pattern=_ENV_NAME,
        description="Environment variable holding the secret: the HMAC key (generic, required), "
        "the routing key (pagerduty, required) or a bearer token (alertmanager, slack: optional).",
    )
    timeout: Duration = Field(5.0, gt=0, description="Per-attempt HTTP timeout.")
    max_attempts: int = Field(
        6, ge=1, le=20, description="Attempts before the delivery goes to the dead-letter topic."
    )
    backoff: Duration = Field(
        0.5, gt=0, description="Base of the exponential backoff between attempts (full jitter)."
    )
    max_backoff: Duration = Field(30.0, gt=0, description="Cap on one wait between attempts.")
    warn_resolve_after: Duration | None = Field(
        3600.0,
        gt=0,
        description="pagerduty: resolve a warning incident once its guardrail has not warned "
        "again for this long (wall-clock); null leaves it open until a kill or restore of the "
        "variant, or PagerDuty's own auto-resolve.",
    )

    @model_validator(mode="after")
    def _check(self) -> HookConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of `url` and `url_env`")
        if self.format in (HookFormat.GENERIC, HookFormat.PAGERDUTY) and not self.secret_env:
            what = "HMAC signing key" if self.format is HookFormat.GENERIC else "routing key"
            raise ValueError(f"a {self.format.value} hook needs `secret_env` (its {what})")
        return self


class FlagConfig(_Model):
    """One flag: its variants, default and guardrails."""

    description: str | None = Field(None, description="Free text for people.")
    owner: str | None = Field(
        None, description="Who maintains the flag (a team or person); `validate` warns if unset."
    )
    tags: list[str] = Field(default_factory=list, description="Free labels for people.")
    expires: date | None = Field(
        None, description="Date (YYYY-MM-DD) after which the flag is due for removal."
    )
    temporary: StrictBool = Field(
        False, description="A release flag, to be removed once fully rolled out."
    )
    default: str = Field(description="Served when a variant is killed or state is unknown.")
    variants: dict[Name, VariantConfig] = Field(
        min_length=1, description="Variant name → weight and value."
    )
    guardrails: list[Guardrail] = Field(
        default_factory=list, description="Rules that act on this flag."
    )
    task: Literal["classification", "regression"] = Field(
        "classification", description="How predictions are scored against labels."
    )
    positive_label: LabelValue | None = Field(
        None, description="Classification: the label precision/recall/F1 are computed for."
    )
    hooks: list[HookConfig] = Field(
        default_factory=list, description="Webhooks for this flag only (besides the global ones)."
    )
    rollout: RolloutConfig | None = Field(
        None, description="A progressive rollout of a candidate variant (steps and gates)."
    )
    targeting: dict[str, JsonValue] | None = Field(
        None,
        description="A rule in flagd's JSON Logic dialect over the evaluation context "
        "(targetingKey, attributes); its result is served when it names a live variant, "
        "otherwise the weights decide. `{$ref: name}` uses a rule from `$evaluators`.",
    )


class JoinConfig(_Model):
    """How predictions wait for their outcomes."""

    ttl: Duration = Field(3600.0, description="Unjoined records expire after this (event time).")
    max_pending: int = Field(
        1_000_000,
        ge=1,
        description="Bound on unjoined records held in memory (the oldest is evicted beyond "
        "it). A worker with --state-dir keeps them on disk instead and evicts none by count: "
        "ttl bounds them.",
    )
    max_clock_skew: Duration = Field(
        600.0,
        description="An input event stamped further than this after its arrival (its Kafka "
        "record timestamp) is dead-lettered as future_timestamp.",
    )
    allowed_lateness: Duration = Field(
        0.5,
        description="Decide stage (driftswitch run --stage decide): how far, in event time, "
        "decisions wait behind the slowest busy join partition. Every decision waits until each "
        "busy join partition has seen events this much later, so a larger value delays "
        "reactions by that much event time; an observation that arrives after the release "
        "passed it is applied late (after later ones) and counted as late, so a smaller value "
        "risks decisions that differ from a backtest in event-time order.",
    )
    idle_after: Duration = Field(
        2.0,
        description="Join stage: a topic partition read to its end for this long (wall-clock "
        "seconds between the broker's fetch answers) stops holding its join partition's "
        "watermark back, so a quiet partition "
        "does not stall decisions; a record that arrives on it later with an older event time "
        "may then be late (see allowed_lateness).",
    )


class Config(_Model):
    """The whole configuration file."""

    flags: dict[Name, FlagConfig] = Field(min_length=1, description="Flag name → definition.")
    join: JoinConfig = Field(
        default_factory=JoinConfig, description="Prediction/outcome join settings."
    )
    hooks: list[HookConfig] = Field(
        default_factory=list, description="Webhooks called for every flag's changes and alerts."
    )
    evaluators: dict[str, JsonValue] = Field(
        default_factory=dict,
        alias="$evaluators",
        description="Reusable targeting rules (flagd's `$evaluators`), used as `{$ref: name}`.",
    )


# --------------------------------------------------------------------------- loading


def _fmt_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _node_at(root: yaml.Node | None, path: Sequence[str | int]) -> yaml.Node | None:
    """The YAML node deepest along ``path`` (its key node for mapping entries): for line numbers."""
    node, mark = root, root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if _key_is(k, part)), None)
            if pair is None:
                break
            mark, node = pair
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            mark = node = node.value[part]
        else:
            break
    return mark


_BOOL_TAG = "tag:yaml.org,2002:bool"


def _key_is(key: yaml.Node, part: str | int) -> bool:
    if key.tag == _BOOL_TAG and isinstance(part, int) and isinstance(key.value, str):
        # A key YAML read as a boolean (`on`, `off`, `yes`, `no`, ...); pydantic's error
        # locations give it as 1 or 0.
        return int(_is_true(key.value)) == int(part)
    return bool(key.value == str(part))


def _display_path(root: yaml.Node | None, path: Sequence[str | int]) -> str:
    """``_fmt_path``, with a key YAML read as a boolean shown as written (``on``, not 1)."""
    shown: list[str | int] = []
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if _key_is(k, part)), None)
            if pair is not None and pair[0].tag == _BOOL_TAG:
                part = str(pair[0].value)
            node = pair[1] if pair is not None else None
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if 0 <= part < len(node.value) else None
        else:
            node = None
        shown.append(part)
    return _fmt_path(shown)


def _is_true(word: str) -> bool:
    return word.lower() in ("yes", "true", "on", "y")


def _value_node(root: yaml.Node | None, path: Sequence[str | int]) -> yaml.Node | None:
    """The value node at ``path`` (``_node_at`` gives the key node of a mapping entry)."""
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if _key_is(k, part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if 0 <= part < len(node.value) else None
        else:
            return None
    return node


def _boolean_hint(word: str, value: bool) -> str:
    return (
        f"YAML read {word} as the boolean {str(value).lower()}, not as text; "
        f'quote it ("{word}") to mean the name'
    )


class _Problems:
    """Collects problems as ``file:line: path: message``; :attr:`items` lists them by line."""

    def __init__(self, source: str, root: yaml.Node | None) -> None:
        self.source = source
        self.root = root
        self._found: list[tuple[int, str]] = []  # (line, or 0 without one; the problem)
        self._seen: set[str] = set()

    def add(self, path: Sequence[str | int], message: str) -> None:
        node = _node_at(self.root, path)
        line = node.start_mark.line + 1 if node is not None else 0
        where = f"{self.source}:{line}" if line else self.source
        problem = f"{where}: {_display_path(self.root, path)}: {message}"
        if problem not in self._seen:  # two checks may find the same thing: say it once
            self._seen.add(problem)
            self._found.append((line, problem))

    @property
    def items(self) -> list[str]:
        """The problems in file order: by line, in the order found within a line; a problem
        without a line (about the whole file) first."""
        return [p for _, p in sorted(self._found, key=lambda found: found[0])]


def _pydantic_message(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


#: Error kinds whose message names no input: ``missing`` and ``extra_forbidden`` have their own
#: words, ``value_error`` and ``assertion_error`` come from our validators (which say what they
#: were given, e.g. a duration), and a length error already counts the items.
_NO_INPUT_SHOWN = {"missing", "extra_forbidden", "value_error", "assertion_error"}
_LENGTH_ERRORS = {"too_short", "too_long"}
#: Values under these keys are never echoed: a webhook's URL may carry a token.
_SECRET_KEYS = {"hooks"}
_SHOWN_CHARS = 40


def _shown_input(kind: str, value: object) -> str | None:
    """What the file gave, short, for a schema message; None when it would not help."""
    if kind in _NO_INPUT_SHOWN:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "...")
    if isinstance(value, date):
        return value.isoformat()
    if kind in _LENGTH_ERRORS:
        return None
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return None


def _model_in(annotation: Any) -> Any:
    """Unwrap ``X | None`` to ``X`` (the field types here have at most one model)."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if getattr(annotation, "__origin__", None) is None and len(args) == 1:
        return args[0]
    return annotation


def _written_names(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the name written in the file: the alias when there is one."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _allowed_fields(model: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """Names (as written: aliases) allowed where the unknown field ``loc[-1]`` was found."""
    current: Any = model
    for part in loc[:-1]:
        current = _model_in(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = _written_names(current).get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif getattr(current, "__origin__", None) in (dict, list):
            current = current.__args__[-1]  # the value/item type; `part` is the key/index
        else:
            return None
    current = _model_in(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(_written_names(current))
    return None


#: How alike (difflib's ratio) an unknown field and an allowed one must be to suggest it: a
#: typo (`varient`, `detecter`, `guardrail`) is above, an unrelated word (`colour` and
#: `rollout`: 0.62) below.
_NEAR_MISS = 0.7
#: Shortest name suggested for being one edit away (:func:`_one_edit_apart`): a one- or
#: two-letter word is one edit away from too many others for that to say it is a typo.
_ONE_EDIT_MIN_CHARS = 3


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one edit: one letter inserted, deleted or replaced, or
    two adjacent letters swapped (Damerau-Levenshtein distance 1).

    difflib's ratio misses such a typo in a short name (`tll` for `ttl` is 0.67: one letter of
    three is off), though it is as plainly a typo as `detecter` is."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0  # the first position where they differ
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):  # one letter inserted at i
        return a[i:] == b[i + 1 :]
    replaced = a[i + 1 :] == b[i + 1 :]
    swapped = a[i : i + 2] == b[i : i + 2][::-1] and a[i + 2 :] == b[i + 2 :]
    return replaced or swapped


def _unknown_field_message(unknown: str | int, allowed: list[str] | None) -> str:
    """``unknown field``, with the closest allowed name when it looks like a typo of one."""
    if not allowed:
        return "unknown field"
    word = str(unknown)
    close = difflib.get_close_matches(word, allowed, n=1, cutoff=_NEAR_MISS)
    if not close and len(word) >= _ONE_EDIT_MIN_CHARS:
        close = [name for name in allowed if _one_edit_apart(word, name)][:1]
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field{guess}; allowed: {', '.join(allowed)}"


def _add_validation_errors(
    problems: _Problems, exc: ValidationError, prefix: Sequence[str | int], model: type[BaseModel]
) -> None:
    for err in exc.errors(include_url=False):
        loc = _error_loc(err)
        msg = _pydantic_message(err, model)
        value = err.get("input")
        node = _value_node(problems.root, [*prefix, *loc])
        if loc and loc[-1] == "[key]":  # the name of a flag or variant, not its value
            loc = loc[:-1]
            key = _node_at(problems.root, [*prefix, *loc])
            if isinstance(value, bool) and key is not None and key.tag == _BOOL_TAG:
                msg = f"invalid name: {_boolean_hint(key.value, value)}"
            else:  # the path shows the name
                msg = f"invalid name: {msg} (letters, digits, '_', '.', '-')"
        elif _SECRET_KEYS.intersection(str(p) for p in [*prefix, *loc]):
            # Our validators end a message with ", got <the value>": not here.
            msg = msg.split(", got ", 1)[0] if err["type"] == "value_error" else msg
        elif isinstance(value, bool) and node is not None and node.tag == _BOOL_TAG:
            if err["type"] == "string_type":
                msg = _boolean_hint(node.value, value)
            else:
                msg += f" (got {node.value})"  # as written: `yes`, not true
        else:
            shown = _shown_input(err["type"], value)
            if shown is not None:
                msg += f" (got {shown})"
        if err["type"] == "extra_forbidden" and loc:
            msg = _unknown_field_message(loc[-1], _allowed_fields(model, loc))
        problems.add([*prefix, *loc], msg)


def _value_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else type(value).__name__


#: A guardrail to check: its index in the file, the guardrail, and the fields that parsed (None:
#: all of them). A guardrail with schema problems is checked on the fields that parsed.
_GuardrailPart = tuple[int, Guardrail, frozenset[str] | None]


@dataclass(frozen=True)
class _FlagParsed:
    """Which fields of a flag's variants and rollout parsed, when some did not.

    A rule is checked only if every field it reads parsed: a rule that reads a broken field would
    report a guess, or the same mistake again in other words.
    """

    #: The fields that parsed of each variant with schema problems (a variant not named here
    #: parsed whole; one that is not a mapping has none).
    variants: Mapping[str, frozenset[str]]
    #: The fields of the rollout that parsed; None: all of them.
    rollout: frozenset[str] | None

    def variant_has(self, name: str, *fields: str) -> bool:
        """Whether ``fields`` of the variant ``name`` parsed."""
        parsed = self.variants.get(name)
        return parsed is None or parsed.issuperset(fields)

    def rollout_has(self, *fields: str) -> bool:
        """Whether ``fields`` of the rollout parsed."""
        return self.rollout is None or self.rollout.issuperset(fields)


#: A flag that parsed whole.
_ALL_PARSED = _FlagParsed(variants={}, rollout=None)


def _check_flag(
    problems: _Problems,
    name: str,
    flag: FlagConfig | None,
    guardrails: Sequence[_GuardrailPart],
    parsed: _FlagParsed = _ALL_PARSED,
) -> None:
    """Cross-field rules pydantic cannot express, each reported at its own path.

    ``flag`` is None when its variant names or default did not parse: then only what the
    guardrails say of themselves is checked. With ``parsed``, the flag's variants and rollout are
    checked on the fields that parsed (the others are not set on ``flag``).
    """
    here: list[str | int] = ["flags", name]
    if flag is not None:
        _check_variants(problems, here, flag, parsed)
    seen: set[str] = set()
    for i, g, g_parsed in guardrails:
        _check_guardrail(problems, [*here, "guardrails", i], flag, g, g_parsed)
        if g_parsed is not None and "name" not in g_parsed:
            continue
        if g.name in seen:
            problems.add([*here, "guardrails", i, "name"], f"duplicate guardrail name {g.name!r}")
        seen.add(g.name)


def _check_variants(
    problems: _Problems, here: list[str | int], flag: FlagConfig, parsed: _FlagParsed
) -> None:
    """The variants, the default and the rollout; on the fields that parsed (``parsed``)."""
    for vname, v in flag.variants.items():
        if parsed.variant_has(vname, "shadow", "weight") and v.shadow and v.weight:
            problems.add(
                [*here, "variants", vname, "weight"], "a shadow variant must have weight 0"
            )
    # Two values that parsed and differ in kind differ whatever a value that did not parse is.
    kinds = {
        vname: _value_kind(v.value)
        for vname, v in flag.variants.items()
        if parsed.variant_has(vname, "value")
    }
    if len(set(kinds.values())) > 1:
        problems.add(
            [*here, "variants"],
            "variant values must all be of one kind (flagd evaluates a flag as boolean, string, "
            f"number or object), got {', '.join(f'{n}: {k}' for n, k in kinds.items())}",
        )
    # The sum needs every weight, and every `shadow` (which says whether a weight counts).
    if all(parsed.variant_has(vname, "weight", "shadow") for vname in flag.variants):
        served = {n: v for n, v in flag.variants.items() if not v.shadow}
        total = sum(v.weight for v in served.values())
        if total != 100:
            problems.add(
                [*here, "variants"],
                f"weights of served variants must add up to 100, got {total} "
                f"({', '.join(f'{n}={v.weight}' for n, v in served.items())})",
            )
    known = ", ".join(flag.variants)
    if flag.default not in flag.variants:
        problems.add(
            [*here, "default"], f"default variant {flag.default!r} is not a variant; known: {known}"
        )
    elif parsed.variant_has(flag.default, "shadow") and flag.variants[flag.default].shadow:
        problems.add([*here, "default"], "the default variant cannot be a shadow variant")
    if flag.rollout is not None:
        _check_rollout(problems, [*here, "rollout"], flag, flag.rollout, known, parsed)


def _check_guardrail(
    problems: _Problems,
    here: list[str | int],
    flag: FlagConfig | None,
    g: Guardrail,
    parsed: frozenset[str] | None = None,
) -> None:
    """A guardrail's rules; with ``parsed``, only those whose fields all parsed (the others are
    not set on ``g``). Without ``flag``, only those about the guardrail itself."""

    def has(*fields: str) -> bool:
        return parsed is None or parsed.issuperset(fields)

    known = ", ".join(flag.variants) if flag is not None else ""
    if flag is not None and has("variant") and g.variant not in flag.variants:
        problems.add([*here, "variant"], f"variant {g.variant!r} does not exist; known: {known}")
    if has("compare_to") and g.compare_to is not None:
        if has("variant") and g.compare_to == g.variant:
            problems.add([*here, "compare_to"], "a variant cannot be compared to itself")
        elif flag is not None and g.compare_to not in flag.variants:
            problems.add(
                [*here, "compare_to"], f"variant {g.compare_to!r} does not exist; known: {known}"
            )
    if (
        flag is not None
        and has("action", "variant")
        and g.action in (GuardrailAction.KILL, GuardrailAction.SHIFT)
        and g.variant == flag.default
    ):
        problems.add(
            [*here, "action"],
            f"cannot {g.action} the default variant {g.variant!r}: traffic falls back to it",
        )
    if has("metric", "feature"):
        if g.metric is Metric.FEATURE and not g.feature:
            problems.add([*here, "feature"], "metric 'feature' needs `feature: <feature name>`")
        if g.metric is not Metric.FEATURE and g.feature:
            problems.add([*here, "feature"], "`feature` is only used with metric 'feature'")
    if has("segment_by") and g.segment_by is not None:
        _check_segment_by(problems, here, g, has)
    elif has("segment_by", "metric_segments") and g.metric_segments:
        problems.add([*here, "metric_segments"], "`metric_segments` needs `segment_by`")
    if has("detector", "metric", "compare_to"):
        budget_parsed = has("false_alarm_every", "expected_rate")
        _check_detector(
            problems, here, g.detector, g.metric, g.compare_to, g if budget_parsed else None
        )


#: An attribute a guardrail segments by: ``attributes.<name>`` (a flat attribute of predictions).
SEGMENT_PATH = re.compile(r"attributes\.([A-Za-z0-9_-]{1,64})")


def segment_names(paths: list[str]) -> list[str]:
    """The attribute names of ``segment_by`` paths (``attributes.region`` -> ``region``)."""
    return [p.removeprefix("attributes.") for p in paths]


def _check_segment_by(
    problems: _Problems, here: list[str | int], g: Guardrail, has: Callable[..., bool]
) -> None:
    """``segment_by``; ``has(*fields)`` says whether those fields of ``g`` parsed."""
    assert g.segment_by is not None
    for i, path in enumerate(g.segment_by):
        if not SEGMENT_PATH.fullmatch(path):
            problems.add(
                [*here, "segment_by", i],
                f"expected attributes.<name> (letters, digits, _ or -), got {path!r}",
            )
    if len(set(g.segment_by)) != len(g.segment_by):
        problems.add([*here, "segment_by"], "an attribute is named twice")
    if has("action") and g.action is GuardrailAction.SHIFT:
        problems.add(
            [*here, "action"],
            "a guardrail with `segment_by` does warn, hold or kill (in the segment); shift moves "
            "weight for everyone",
        )
    if has("metric") and g.metric is Metric.INTERLEAVING:
        problems.add([*here, "segment_by"], "metric 'interleaving' cannot be segmented")


def _check_detector(
    problems: _Problems,
    here: list[str | int],
    detector: DetectorSpec,
    metric: Metric,
    compare_to: str | None,
    guardrail: Guardrail | None = None,
) -> None:
    """The detector's kind, its input and its parameters (what the detector itself checks).

    ``guardrail`` is given when the whole guardrail parsed: its budget is then checked too.
    """
    try:
        cls = registry.detector_class(detector.kind)
    except ValueError as exc:
        problems.add([*here, "detector", "kind"], str(exc))
        return
    info = METRIC_TRAITS[metric]
    if info.input not in cls.inputs:
        fitting = [k for k in registry.kinds() if info.input in registry.detector_class(k).inputs]
        problems.add(
            [*here, "detector", "kind"],
            f"detector {detector.kind!r} does not take {info.input} input, which metric "
            f"{metric.value!r} produces; detectors that do: {', '.join(fitting)}",
        )
    if metric is Metric.INTERLEAVING and compare_to is None:
        problems.add(
            [*here, "compare_to"],
            "metric 'interleaving' compares the variant's team with another's: set `compare_to`",
        )
    if cls.two_sample and compare_to is None:
        problems.add(
            [*here, "compare_to"],
            f"detector {detector.kind!r} compares two variants: set `compare_to`",
        )
    if not cls.two_sample and compare_to is not None and metric is not Metric.INTERLEAVING:
        problems.add(
            [*here, "compare_to"],
            f"detector {detector.kind!r} watches one variant; `compare_to` needs a "
            "two-sample detector such as 'sequential'",
        )
    if (
        guardrail is not None
        and guardrail.false_alarm_every is not None
        and not _check_budget(problems, here, guardrail, cls.two_sample)
    ):
        return
    spec = _detector_spec(detector, metric)
    if spec.get("method") == "betting" and info.input != "bernoulli":
        problems.add(
            [*here, "detector", "method"],
            f"method 'betting' compares 0/1 outcomes; metric {metric.value!r} is "
            f"{info.input}: use method 'asymptotic'",
        )
        return
    try:
        registry.create(spec)
    except ValueError as exc:
        problems.add([*here, "detector"], str(exc))


def _check_budget(
    problems: _Problems, here: list[str | int], g: Guardrail, two_sample: bool
) -> bool:
    """``false_alarm_every`` needs an ``arl0`` detector, no explicit ``arl0``, and a stated rate."""
    ok = True
    if "arl0" not in registry.parameters(g.detector.kind):
        what = (
            "its `alpha` is already the chance of any false harm over the whole comparison"
            if two_sample
            else "it is not calibrated to a false-alarm rate"
        )
        problems.add(
            [*here, "false_alarm_every"],
            f"detector {g.detector.kind!r} has no `arl0` to derive from a duration: {what}",
        )
        return False
    if "arl0" in g.detector.params():
        problems.add(
            [*here, "detector", "arl0"],
            "give either `detector.arl0` (events) or `false_alarm_every` (a duration), not both",
        )
        ok = False
    if g.false_alarm_every is not None and g.false_alarm_every <= 0:
        problems.add([*here, "false_alarm_every"], "must be a positive duration such as 90d")
        ok = False
    if g.expected_rate is None:
        problems.add(
            [*here, "false_alarm_every"],
            "needs `expected_rate` (events per second reaching this guardrail, e.g. 40/s): "
            "the threshold is fixed when the detector is built, so the rate must be stated",
        )
        ok = False
    return ok


#: Flag fields no cross-field rule reads beside their own: one that does not parse is left out
#: and the rest of the flag checked (a broken targeting is not checked further, nor a rollout
#: that is not a mapping; a rollout with fields in error is checked on the others).
_FLAG_FIELDS_APART = frozenset(
    {
        "description",
        "owner",
        "tags",
        "expires",
        "temporary",
        "task",
        "positive_label",
        "hooks",
        "rollout",
        "targeting",
    }
)


def _error_loc(err: Mapping[str, Any]) -> list[str | int]:
    return [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]


def _flag_parts(
    fdata: object, exc: ValidationError
) -> tuple[FlagConfig | None, _FlagParsed, list[_GuardrailPart]]:
    """What of a flag can be checked across fields although its schema failed (``exc``).

    The flag without the fields in error that nothing else reads (hooks, ...) and without unknown
    fields, its variants and rollout with the fields that parsed when some did not (named in the
    ``_FlagParsed``); or None when its variants as a whole, a variant's name or the default are
    in error (then every rule involving them is skipped rather than guessed). And each guardrail
    at its index in the file, with the fields that parsed when some did not.
    """
    if not isinstance(fdata, dict):
        return None, _ALL_PARSED, []
    core_ok = True
    left_out: set[str] = set()
    guardrail_errors: dict[int, set[str | int]] = {}
    variant_errors: dict[str, set[str | int]] = {}
    rollout_errors: set[str | int] = set()
    for loc in map(_error_loc, exc.errors(include_url=False)):
        top = loc[0] if loc else None
        if top == "guardrails" and len(loc) >= 2 and isinstance(loc[1], int):
            guardrail_errors.setdefault(loc[1], set()).add(loc[2] if len(loc) > 2 else "")
        elif top == "variants" and len(loc) >= 2 and isinstance(loc[1], str) and "[key]" not in loc:
            # The variant's fields, or the variant is not a mapping: its name stands either way.
            variant_errors.setdefault(loc[1], set()).add(loc[2] if len(loc) > 2 else "")
        elif top == "rollout" and len(loc) >= 2:
            rollout_errors.add(loc[1])
        elif top == "guardrails" or top in _FLAG_FIELDS_APART:
            left_out.add(str(top))
        elif isinstance(top, str) and top not in FlagConfig.model_fields:  # an unknown field
            left_out.add(top)
        else:  # the variants as a whole, a variant's name, default, or the flag is not a mapping
            core_ok = False
    flag: FlagConfig | None = None
    parsed = _ALL_PARSED
    if core_ok:
        variants: dict[str, VariantConfig] = {}
        variants_parsed: dict[str, frozenset[str]] = {}
        for vname, v in fdata["variants"].items():
            if vname not in variant_errors:
                variants[vname] = VariantConfig.model_validate(v)
            elif isinstance(v, dict) and "" not in variant_errors[vname]:
                variants[vname], variants_parsed[vname] = _parsed_fields(
                    VariantConfig, v, variant_errors[vname]
                )
            else:  # not a mapping: its name is all there is, none of its fields parsed
                variants[vname], variants_parsed[vname] = _parsed_fields(
                    VariantConfig, {}, set(VariantConfig.model_fields)
                )
        raw_rollout = fdata.get("rollout")
        rollout: RolloutConfig | None = None
        rollout_parsed: frozenset[str] | None = None
        if "rollout" in left_out or raw_rollout is None:
            pass
        elif not rollout_errors:
            rollout = RolloutConfig.model_validate(raw_rollout)
        elif isinstance(raw_rollout, dict):
            rollout, rollout_parsed = _parsed_fields(RolloutConfig, raw_rollout, rollout_errors)
        rest = _parsed_values(
            FlagConfig, fdata, left_out | {"guardrails", "variants", "rollout"}
        )  # guardrails are checked one by one below
        flag = FlagConfig.model_construct(**rest, variants=variants, rollout=rollout)
        parsed = _FlagParsed(variants=variants_parsed, rollout=rollout_parsed)
    raw = fdata.get("guardrails")
    if "guardrails" in left_out or not isinstance(raw, list):
        return flag, parsed, []
    parts: list[_GuardrailPart] = []
    for i, g in enumerate(raw):
        if i not in guardrail_errors:
            parts.append((i, Guardrail.model_validate(g), None))
        elif isinstance(g, dict) and "" not in guardrail_errors[i]:
            parts.append((i, *_parsed_fields(Guardrail, g, guardrail_errors[i])))
    return flag, parsed, parts


_M = TypeVar("_M", bound=BaseModel)


def _parsed_fields(
    model: type[_M], raw: dict[str, Any], bad: Set[str | int]
) -> tuple[_M, frozenset[str]]:
    """A ``model`` (a guardrail, a variant, a rollout) with only the fields that parsed set (a
    field left unset has its default), and their names."""
    values = _parsed_values(model, raw, bad)
    return model.model_construct(**values), frozenset(values)


def _parsed_values(
    model: type[BaseModel], raw: dict[str, Any], bad: Set[str | int]
) -> dict[str, Any]:
    """The fields of ``model`` in ``raw`` that parse, each on its own (those in ``bad`` are
    skipped: they have errors), and the defaults of those not in ``raw``."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name in bad:
            continue
        if name not in raw:
            if not field.is_required():
                values[name] = field.get_default(call_default_factory=True)
            continue
        try:
            values[name] = _field_adapter(model, name).validate_python(raw[name])
        except ValidationError:  # not expected: the field had no error of its own
            continue
    return values


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """Validates one field of a model on its own."""
    field = model.model_fields[name]
    annotation: Any = field.annotation
    if field.metadata:  # constraints (ge=0, ...) and validators (a duration's)
        annotation = Annotated[annotation, *field.metadata]
    return TypeAdapter(annotation)


def assignment_order(flag: FlagConfig) -> list[str]:
    """Variants in the order assignment lays them out: the non-default variants in config order
    with the default second (:func:`driftswitch.streams.contract.assign.fractions`)."""
    others = [v for v in flag.variants if v != flag.default]
    return [*others[:1], flag.default, *others[1:]]


def _check_rollout(
    problems: _Problems,
    here: list[str | int],
    flag: FlagConfig,
    r: RolloutConfig,
    known: str,
    parsed: _FlagParsed,
) -> None:
    """The rollout's cross-field rules; each problem at its own path. A rule is checked only if
    the fields it reads, of the rollout and of the variants, parsed (``parsed``)."""
    has = parsed.rollout_has
    candidate: VariantConfig | None = None
    if has("variant"):
        candidate = flag.variants.get(r.variant)
        if candidate is None:
            problems.add(
                [*here, "variant"], f"variant {r.variant!r} does not exist; known: {known}"
            )
    # The control is `compare_to`, or the default when unset: unknown if `compare_to` is broken.
    control = r.control(flag) if has("compare_to") else None
    if control is not None and has("variant") and control == r.variant:
        problems.add(
            [*here, "compare_to" if r.compare_to is not None else "variant"],
            f"the candidate {r.variant!r} cannot be compared to itself"
            + ("" if r.compare_to is not None else " (compare_to defaults to the flag's default)"),
        )
    elif control is not None and control not in flag.variants:
        # An unset compare_to is the default: one that is not a variant is said at `default`.
        if r.compare_to is not None:
            problems.add(
                [*here, "compare_to"], f"variant {control!r} does not exist; known: {known}"
            )
    elif (
        control is not None
        and parsed.variant_has(control, "shadow")
        and flag.variants[control].shadow
    ):
        problems.add(
            [*here, "compare_to"],
            f"control {control!r} is a shadow variant: it serves no traffic to give",
        )
    if has("steps"):
        for i in range(1, len(r.steps)):
            if r.steps[i] <= r.steps[i - 1]:
                problems.add(
                    [*here, "steps", i],
                    f"steps must increase strictly, got {r.steps[i]} after {r.steps[i - 1]}",
                )
    if has("metric") and r.metric not in ROLLOUT_METRICS:
        problems.add(
            [*here, "metric"],
            f"a rollout compares {', '.join(m.value for m in ROLLOUT_METRICS)}; "
            f"got {r.metric.value!r}",
        )
    if has("metric", "margin") and r.metric is Metric.INTERLEAVING and r.margin >= 0.5:
        problems.add(
            [*here, "margin"],
            f"with metric 'interleaving' the margin is in win-probability units, in [0, 0.5); "
            f"got {r.margin}",
        )
    if (
        has("min_duration", "max_duration")
        and r.max_duration is not None
        and r.max_duration < r.min_duration
    ):
        problems.add([*here, "max_duration"], "max_duration must be at least min_duration")
    if has("segments") and r.segments is not None:
        _check_rollout_segments(problems, [*here, "segments"], r, has)
    if candidate is None or control is None or control == r.variant or control not in flag.variants:
        return
    # From here on, rules between the candidate and its control, which both exist.
    others = [n for n in flag.variants if n not in (r.variant, control)]
    if has("steps") and r.steps and all(parsed.variant_has(n, "weight", "shadow") for n in others):
        other_weight = sum(flag.variants[n].weight for n in others if not flag.variants[n].shadow)
        if r.steps[-1] > 100 - other_weight:
            problems.add(
                [*here, "steps", len(r.steps) - 1],
                f"the last step ({r.steps[-1]}) leaves no room for the other variants' weight "
                f"({other_weight}): at most {100 - other_weight}",
            )
    if has("promote_shadow") and parsed.variant_has(r.variant, "shadow"):
        if candidate.shadow and not r.promote_shadow:
            problems.add(
                [*here, "promote_shadow"],
                f"{r.variant!r} is a shadow variant: set `promote_shadow: true` to roll it out",
            )
        if r.promote_shadow and not candidate.shadow:
            problems.add(
                [*here, "promote_shadow"],
                f"{r.variant!r} is not a shadow variant (`shadow: true`); it starts at its weight",
            )
    if (
        has("steps")
        and parsed.variant_has(r.variant, "shadow", "weight")
        and not candidate.shadow
        and r.steps
        and candidate.weight != r.steps[0]
    ):
        problems.add(
            [*here, "steps", 0],
            f"the first step ({r.steps[0]}) must equal the candidate's configured weight "
            f"({candidate.weight}): the rollout starts there",
        )
    order = assignment_order(flag)  # reads only the variants' names and the default
    if abs(order.index(r.variant) - order.index(control)) != 1:
        problems.add(
            [*here, "variant"],
            f"{r.variant!r} and {control!r} must be neighbours in the assignment order "
            f"({', '.join(order)}: non-default variants in config order, the default second) so "
            "the ramp moves users only toward the candidate; reorder the variants",
        )


def _check_rollout_segments(
    problems: _Problems, here: list[str | int], r: RolloutConfig, has: Callable[..., bool]
) -> None:
    """``segments``; ``has(*fields)`` says whether those fields of the rollout parsed."""
    assert r.segments is not None
    seen: set[str] = set()
    for i, seg in enumerate(r.segments):
        if seg.name in seen:
            problems.add([*here, i, "name"], f"duplicate segment name {seg.name!r}")
        seen.add(seg.name)
        if seg.when is None and i != len(r.segments) - 1:
            problems.add([*here, i, "when"], "only the last segment may omit `when` (everyone)")
        if seg.when is not None:
            for path, message in targeting.check_evaluators({"when": seg.when}, [*here, i]):
                problems.add(path, message)
    if has("metric") and r.metric is Metric.INTERLEAVING:
        problems.add(here, "a rollout on metric 'interleaving' cannot go by segment")
    if has("promote_shadow") and r.promote_shadow:
        problems.add(here, "a shadow promotion (`promote_shadow`) cannot go by segment")


def detector_spec(g: Guardrail, flag: FlagConfig) -> dict[str, Any]:
    """The detector spec for a guardrail, with metric-derived defaults filled in.

    Two-sample detectors need the metric's direction; it is derived from the metric unless the
    user set it. A detector with a ``method_for`` (``sequential``) gets the method that suits the
    metric's input (betting for 0/1 outcomes, asymptotic for continuous ones) unless set. A budget
    stated as ``false_alarm_every`` at ``expected_rate`` becomes ``arl0``.
    """
    spec = _detector_spec(g.detector, g.metric)
    if g.false_alarm_every is not None and g.expected_rate is not None:
        spec["arl0"] = budget.arl0_for(g.false_alarm_every, g.expected_rate)
    return spec


def _detector_spec(detector: DetectorSpec, metric: Metric) -> dict[str, Any]:
    spec = detector.spec()
    cls = registry.detector_class(detector.kind)
    params = registry.parameters(detector.kind)
    if cls.two_sample and "higher_is_better" in params:
        spec.setdefault("higher_is_better", METRIC_TRAITS[metric].higher_is_better)
    method_for = getattr(cls, "method_for", None)
    if method_for is not None and "method" in params:
        spec.setdefault("method", method_for(METRIC_TRAITS[metric].input))
    return spec


#: Largest config accepted. A config describes flags and guardrails: even hundreds of flags stay
#: far below this, and a larger file is almost always the wrong file (an events file, a dump).
MAX_CONFIG_BYTES = 1 << 20

#: libyaml's parser when PyYAML has it (tens of times faster), else the pure-Python one.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _too_large(source: str, size: int) -> str:
    return (
        f"{source}: {size:,} bytes is too large for a config file (at most "
        f"{MAX_CONFIG_BYTES:,}); is it the right file?"
    )


def _unbuildable(root: yaml.Node | None) -> yaml.ScalarNode | None:
    """The first scalar under ``root`` that YAML cannot build (its line for the error)."""
    builder = _Loader("")  # the failed loader still holds the node it was building
    try:
        stack = [root] if root is not None else []
        while stack:
            node = stack.pop()
            if isinstance(node, yaml.ScalarNode):
                try:
                    builder.construct_object(node)
                except ValueError:
                    return node
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(reversed(node.value))
            elif isinstance(node, yaml.MappingNode):
                stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
        return None
    finally:
        builder.dispose()


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate configuration text; ``ConfigError`` lists every problem."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([_too_large(source, len(text.encode("utf-8", "replace")))])
    loader = _Loader(text)
    root: yaml.Node | None = None
    try:  # one parse: the node tree gives line numbers, the data is built from it
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    except ValueError as exc:  # a scalar YAML cannot build, e.g. the date 2024-13-01
        node = _unbuildable(root)
        where = f"{source}:{node.start_mark.line + 1}" if node is not None else source
        value = f" {node.value!r}" if node is not None else ""
        raise ConfigError([f"{where}: invalid YAML value{value}: {exc}"]) from None
    finally:
        loader.dispose()
    problems = _Problems(source, root)
    if not isinstance(data, dict):
        problems.add([], "expected a mapping with a `flags:` section")
        raise ConfigError(problems.items)
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:  # every schema problem, across all flags
        _add_validation_errors(problems, exc, [], Config)
    # Cross-field rules for every flag, even if another flag's schema failed; a flag whose own
    # schema failed is checked on the parts that parsed (each reported at its path in the file).
    flags_data = data.get("flags")
    for name, fdata in flags_data.items() if isinstance(flags_data, dict) else ():
        flag: FlagConfig | None
        parsed = _ALL_PARSED
        try:
            flag = FlagConfig.model_validate(fdata)
            guardrails: list[_GuardrailPart] = [(i, g, None) for i, g in enumerate(flag.guardrails)]
        except ValidationError as exc:  # reported above
            flag, parsed, guardrails = _flag_parts(fdata, exc)
        _check_flag(problems, str(name), flag, guardrails, parsed)
        if flag is not None and flag.targeting is not None:
            refs = data.get("$evaluators")
            for path, message in targeting.check_rule(
                flag.targeting,
                list(flag.variants),
                refs if isinstance(refs, dict) else {},
                ["flags", str(name), "targeting"],
            ):
                problems.add(path, message)
    evaluators = data.get("$evaluators")
    if isinstance(evaluators, dict):
        for path, message in targeting.check_evaluators(evaluators, ["$evaluators"]):
            problems.add(path, message)
    if problems.items or config is None:
        raise ConfigError(problems.items)
    return _expand_targeting(config)


def _expand_targeting(config: Config) -> Config:
    """The config with every flag's ``$ref`` replaced by its ``$evaluators`` rule."""
    if not config.evaluators:
        return config
    flags = {
        name: flag.model_copy(
            update={"targeting": targeting.expand_refs(flag.targeting, config.evaluators)}
        )
        if flag.targeting is not None
        else flag
        for name, flag in config.flags.items()
    }
    return config.model_copy(update={"flags": flags})


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file."""
    p = Path(path)
    try:
        if p.is_dir():
            raise ConfigError([f"{p}: is a directory, not a config file"])
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([_too_large(str(p), size)])
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 text: {exc.reason}"]) from None
    return parse_config(text, str(p))


def config_warnings(path: str | Path, config: Config) -> list[str]:
    """Advice on a valid config, as ``file:line: path: message``: flags without an owner."""
    p = Path(path)
    problems = _Problems(str(p), yaml.compose(p.read_text(encoding="utf-8")))
    for name, flag in config.flags.items():
        if not flag.owner:
            problems.add(
                ["flags", name],
                "no owner: add `owner:` (a team or person) so stale flags reach someone",
            )
    return problems.items


def iter_guardrails(config: Config) -> Iterator[tuple[str, FlagConfig, Guardrail]]:
    """Every (flag name, flag, guardrail) in the config, in file order."""
    for name, flag in config.flags.items():
        for g in flag.guardrails:
            yield name, flag, g
