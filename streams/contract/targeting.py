"""Targeting rules in flagd's JSON Logic dialect: checking, ``$ref`` expansion, evaluation.

A flag's ``targeting`` is a JSON Logic expression over the evaluation context (``targetingKey``,
the attributes, and ``$flagd.flagKey`` / ``$flagd.timestamp``) whose result names a variant, or
is ``null`` for "no opinion". Rules are evaluated by ``json_logic`` (panzi-json-logic, the
interpreter openfeature-flagd-core uses) with flagd's operators ``fractional``, ``starts_with``,
``ends_with`` and ``sem_ver`` written here to the same semantics as openfeature-flagd-core 2.0.0,
so a rule gives the same variant here as in flagd and every flagd OpenFeature provider
(``tests/unit/test_targeting.py`` checks it against openfeature-provider-flagd in file mode).

:func:`served_targeting` combines a flag state's rule with its weights into the one expression
the flagd document carries and the client evaluates:

- the rule's result is served when it names a live (not killed) variant; as in flagd, a boolean
  result names the variant ``true`` or ``false``;
- when it names a killed variant, the default variant is served (a kill moves exactly that
  variant's users to the default, as in :func:`driftswitch.streams.contract.assign.fractions`);
- otherwise (``null``, or anything that is not a variant) the weights decide, through the same
  ``fractional`` the flag would carry without a rule;
- while a variant is pinned the rule is ignored: everyone gets the pinned variant;
- ahead of all that, the users of a segment where a variant was killed (the state's
  ``segments``, from a per-segment guardrail or a command) get the default variant, pinned or
  not: ``{"if": [<in a killed segment>, default, <the above>]}``.

Pure: imports ``json_logic``, ``semver``, ``cbor2`` and ``mmh3`` (all pure Python or small).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import cbor2
import mmh3
import semver
from json_logic import builtins as _json_logic_builtins
from json_logic import jsonLogic

from driftswitch.streams.contract.assign import MAX_TOTAL_WEIGHT, fractions

if TYPE_CHECKING:
    from driftswitch.streams.contract.events import FlagChangeEvent, SegmentOverride

log = logging.getLogger(__name__)

Path = list[str | int]
Problem = tuple[Path, str]

# --------------------------------------------------------------------------- flagd operators


def _normalize_numbers(data: Any) -> Any:
    """Integral floats within 64-bit range as ints (flagd's CBOR rule for bucketing values)."""
    if isinstance(data, dict):
        return {k: _normalize_numbers(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_normalize_numbers(v) for v in data]
    if isinstance(data, float) and data.is_integer() and -(2**63) <= data <= 2**64 - 1:
        return int(data)
    return data


def _op_fractional(data: Any, *args: Any) -> Any:
    """flagd's ``fractional``: ``[bucketBy?, [variant, weight], ...]``, MurmurHash3 of CBOR."""
    if not args:
        return None
    if isinstance(args[0], list | tuple):
        key = data.get("targetingKey") if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            return None
        flagd = data.get("$flagd", {})
        bucket_by: Any = [flagd.get("flagKey", "") if isinstance(flagd, dict) else "", key]
    else:
        bucket_by, args = args[0], args[1:]
        if bucket_by is None:
            return None
    try:
        encoded = cbor2.dumps(_normalize_numbers(bucket_by), canonical=True)
    except Exception:
        return None
    h: int = mmh3.hash(encoded, 0, False)
    parsed: list[tuple[Any, int]] = []
    for arg in args:
        if not isinstance(arg, list | tuple) or not arg or len(arg) > 2:
            return None
        weight = 1
        if len(arg) == 2:
            w = arg[1]
            if isinstance(w, bool) or not isinstance(w, int):
                return None
            weight = max(0, w)
        parsed.append((arg[0], weight))
    total = sum(w for _, w in parsed)
    if total > MAX_TOTAL_WEIGHT or total <= 0:
        return None
    bucket = (h * total) >> 32
    end = 0
    for variant, weight in parsed:
        end += weight
        if bucket < end:
            return variant
    return None


def _string_comp(compare: Callable[[str, str], bool], args: tuple[Any, ...]) -> bool | None:
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        return None
    return compare(args[0], args[1])


def _op_starts_with(data: Any, *args: Any) -> bool | None:
    return _string_comp(str.startswith, args)


def _op_ends_with(data: Any, *args: Any) -> bool | None:
    return _string_comp(str.endswith, args)


def _version(arg: Any) -> semver.Version:
    version = str(arg)
    if version.startswith(("v", "V")):
        version = version[1:]
    numeric = version.split("-")[0].split("+")[0]
    dots = numeric.count(".")
    if dots < 2:
        version = numeric + ".0" * (2 - dots) + version[len(numeric) :]
    return semver.Version.parse(version)


def _op_sem_ver(data: Any, *args: Any) -> bool | None:
    """flagd's ``sem_ver``: ``[version, op, version]`` with ``= != < <= > >= ^ ~``."""
    if len(args) != 3:
        return None
    a, op, b = args
    try:
        v1, v2 = _version(a), _version(b)
    except (ValueError, TypeError):
        return None
    if op == "=":
        return bool(v1 == v2)
    if op == "!=":
        return bool(v1 != v2)
    if op == "<":
        return bool(v1 < v2)
    if op == "<=":
        return bool(v1 <= v2)
    if op == ">":
        return bool(v1 > v2)
    if op == ">=":
        return bool(v1 >= v2)
    if op == "^":
        return bool(v1.major == v2.major)
    if op == "~":
        return bool(v1.major == v2.major and v1.minor == v2.minor)
    return None


OPERATORS: dict[str, Any] = {
    **_json_logic_builtins.BUILTINS,
    "fractional": _op_fractional,
    "starts_with": _op_starts_with,
    "ends_with": _op_ends_with,
    "sem_ver": _op_sem_ver,
}

#: Operators the interpreter handles itself (not in ``OPERATORS``).
_SPECIAL = frozenset({"if", "?:", "and", "or", "filter", "reduce", "map", "all", "some", "none"})

SEM_VER_OPS = ("=", "!=", "<", "<=", ">", ">=", "^", "~")

#: (min, max) number of arguments; ``None`` for no upper bound.
_ARITY: dict[str, tuple[int, int | None]] = {
    "if": (1, None),
    "?:": (3, 3),
    "and": (1, None),
    "or": (1, None),
    "!": (1, 1),
    "!!": (1, 1),
    "==": (2, 2),
    "!=": (2, 2),
    "===": (2, 2),
    "!==": (2, 2),
    "<": (2, 3),
    "<=": (2, 3),
    ">": (2, 2),
    ">=": (2, 2),
    "in": (2, 2),
    "starts_with": (2, 2),
    "ends_with": (2, 2),
    "sem_ver": (3, 3),
    "var": (0, 2),
    "missing": (0, None),
    "missing_some": (2, 2),
    "fractional": (1, None),
    "cat": (0, None),
    "substr": (2, 3),
    "merge": (0, None),
    "+": (0, None),
    "*": (1, None),
    "-": (1, 2),
    "/": (2, 2),
    "%": (2, 2),
    "min": (1, None),
    "max": (1, None),
    "filter": (2, 2),
    "map": (2, 2),
    "reduce": (2, 3),
    "all": (2, 2),
    "some": (2, 2),
    "none": (2, 2),
}

KNOWN_OPERATORS = frozenset(_ARITY)

#: The variant names a boolean result of a rule names (flagd serves ``true`` as "true").
_BOOLEAN_NAMES = ("true", "false")

#: Operators whose result is always ``true`` or ``false`` (or ``null``): as a rule's result they
#: can only name the variants ``true`` and ``false``.
_YIELDS_BOOLEAN = frozenset(
    {"!", "!!", "==", "!=", "===", "!==", "<", "<=", ">", ">=", "in"}
    | {"starts_with", "ends_with", "sem_ver", "all", "some", "none"}
)


def _plural(n: int) -> str:
    return f"{n} argument" + ("" if n == 1 else "s")


def _arity_text(low: int, high: int | None) -> str:
    if high is None:
        return f"at least {_plural(low)}"
    if low == high:
        return f"exactly {_plural(low)}"
    return f"{low} to {high} arguments"


# --------------------------------------------------------------------------- checks


def check_rule(
    rule: Any, variants: Sequence[str], evaluators: Mapping[str, Any], path: Path
) -> list[Problem]:
    """Every problem in a flag's rule: unknown operator or ``$ref``, wrong arity, unknown variant.

    A string in a result position (a branch of ``if``, a ``fractional`` bucket, the rule itself)
    must name one of ``variants``; ``null`` there means "let the weights decide".
    """
    problems: list[Problem] = []
    _check(rule, variants, evaluators, path, problems, result=True, seen=())
    return problems


def check_evaluators(evaluators: Mapping[str, Any], path: Path) -> list[Problem]:
    """Problems in the shared ``$evaluators`` (operators and arity; variants are per flag)."""
    problems: list[Problem] = []
    for name, rule in evaluators.items():
        _check(rule, None, evaluators, [*path, name], problems, result=False, seen=(name,))
    reported: set[frozenset[str]] = set()
    for name in evaluators:
        cycle = _cycle(name, evaluators, (name,))
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            problems.append(
                ([*path, name], "evaluators refer to each other in a cycle: " + " -> ".join(cycle))
            )
    return problems


def _refs(node: Any) -> list[str]:
    """The ``$ref`` names inside a rule."""
    if isinstance(node, list):
        return [name for item in node for name in _refs(item)]
    if isinstance(node, dict):
        if len(node) == 1 and isinstance(node.get("$ref"), str):
            return [node["$ref"]]
        return [name for value in node.values() for name in _refs(value)]
    return []


def _cycle(name: str, evaluators: Mapping[str, Any], trail: tuple[str, ...]) -> list[str]:
    for ref in _refs(evaluators[name]):
        if ref == trail[0]:
            return [*trail, ref]
        if ref in evaluators and ref not in trail:
            found = _cycle(ref, evaluators, (*trail, ref))
            if found:
                return found
    return []


def _check(
    node: Any,
    variants: Sequence[str] | None,
    evaluators: Mapping[str, Any],
    path: Path,
    problems: list[Problem],
    *,
    result: bool,
    seen: tuple[str, ...],
) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check(item, variants, evaluators, [*path, i], problems, result=False, seen=seen)
        return
    if not isinstance(node, dict):
        if result and isinstance(node, str) and variants is not None and node not in variants:
            problems.append(
                (path, f"variant {node!r} does not exist; known: {', '.join(variants)}")
            )
        elif result and isinstance(node, bool) and variants is not None:
            name = variant_name(node)
            if name not in variants:
                problems.append(
                    (
                        path,
                        f"variant {name!r} does not exist ({name} names it, as in flagd); known: "
                        f"{', '.join(variants)}; null lets the weights decide",
                    )
                )
        return
    if len(node) != 1:
        keys = ", ".join(repr(k) for k in node) or "none"
        problems.append((path, f"an operation is an object with exactly one operator, got {keys}"))
        return
    op, args = next(iter(node.items()))
    here = [*path, op]
    if op == "$ref":
        if not isinstance(args, str) or args not in evaluators:
            known = ", ".join(evaluators) or "none defined"
            problems.append((here, f"unknown evaluator {args!r}; known ($evaluators): {known}"))
        elif args in seen:
            pass  # a cycle: reported once, under ``$evaluators`` (check_evaluators)
        elif variants is not None:
            # The evaluator's own operators and arity are checked once, under ``$evaluators``;
            # here only what depends on the flag: the variants it may produce.
            inner: list[Problem] = []
            _check(
                evaluators[args],
                variants,
                evaluators,
                here,
                inner,
                result=result,
                seen=(*seen, args),
            )
            problems.extend(
                (where, f"{message} (through $evaluators.{args})")
                for where, message in inner
                if message.startswith("variant ")
            )
        return
    if op not in _ARITY:
        problems.append(
            (here, f"unknown operator {op!r}; known: {', '.join(sorted(KNOWN_OPERATORS))}")
        )
        return
    items = args if isinstance(args, list) else [args]
    low, high = _ARITY[op]
    if len(items) < low or (high is not None and len(items) > high):
        problems.append((here, f"{op!r} takes {_arity_text(low, high)}, got {len(items)}"))
        return
    if op == "sem_ver" and isinstance(items[1], str) and items[1] not in SEM_VER_OPS:
        problems.append(([*here, 1], f"sem_ver comparison must be one of {', '.join(SEM_VER_OPS)}"))
    if op == "fractional":
        _check_fractional(items, variants, evaluators, here, problems, seen)
        return
    if (
        result
        and op in _YIELDS_BOOLEAN
        and variants is not None
        and not any(name in variants for name in _BOOLEAN_NAMES)
    ):
        problems.append(
            (
                here,
                f"variant 'true' or 'false' does not exist ({op!r} yields one, and names it, as "
                f"in flagd); known: {', '.join(variants)}; to serve a variant when it holds, "
                f"make it a condition: if: [<this>, <variant>, null]",
            )
        )
    for i, item in enumerate(items):
        branch = op in ("if", "?:") and result and (i % 2 == 1 or i == len(items) - 1)
        if op == "?:":
            branch = result and i > 0
        _check(item, variants, evaluators, [*here, i], problems, result=branch, seen=seen)


def _check_fractional(
    items: list[Any],
    variants: Sequence[str] | None,
    evaluators: Mapping[str, Any],
    here: Path,
    problems: list[Problem],
    seen: tuple[str, ...],
) -> None:
    start = 0
    if not isinstance(items[0], list):
        _check(items[0], variants, evaluators, [*here, 0], problems, result=False, seen=seen)
        start = 1
    if start == len(items):
        problems.append((here, "fractional needs at least one [variant, weight] bucket"))
    for i in range(start, len(items)):
        bucket = items[i]
        if not isinstance(bucket, list) or not 1 <= len(bucket) <= 2:
            problems.append(([*here, i], "a fractional bucket is [variant] or [variant, weight]"))
            continue
        if len(bucket) == 2 and (isinstance(bucket[1], bool) or not isinstance(bucket[1], int)):
            problems.append(([*here, i, 1], "a fractional weight is an integer"))
        _check(bucket[0], variants, evaluators, [*here, i, 0], problems, result=True, seen=seen)


# --------------------------------------------------------------------------- $ref


def expand_refs(rule: Any, evaluators: Mapping[str, Any]) -> Any:
    """``rule`` with every ``{"$ref": name}`` replaced by that evaluator (recursively).

    flagd substitutes ``$ref`` textually when it loads a document; expanding at config load gives
    the same rule and keeps every flag state self-contained. Call :func:`check_rule` first: an
    unknown or self-referring ``$ref`` raises ``KeyError`` / ``RecursionError`` here.
    """
    if isinstance(rule, list):
        return [expand_refs(item, evaluators) for item in rule]
    if isinstance(rule, dict):
        if len(rule) == 1 and "$ref" in rule and isinstance(rule["$ref"], str):
            return expand_refs(evaluators[rule["$ref"]], evaluators)
        return {k: expand_refs(v, evaluators) for k, v in rule.items()}
    return rule


# --------------------------------------------------------------------------- serving


def segment_condition(match: Mapping[str, str]) -> Any:
    """JSON Logic that holds for the users of one segment (every attribute equal, as strings).

    ``in`` against a one-element list compares without JSON Logic's loose ``==`` coercion, so
    ``{"region": "5"}`` does not match the number 5 (the engine counts non-string values in a
    guardrail's ``other`` bucket).
    """
    parts = [{"in": [{"var": name}, [value]]} for name, value in sorted(match.items())]
    return parts[0] if len(parts) == 1 else {"and": parts}


def override_condition(override: SegmentOverride) -> Any:
    """JSON Logic that holds for the users a segment override covers."""
    if override.match is not None:
        return segment_condition(override.match)
    if not override.exclude:
        return True
    return {"!": [{"or": [segment_condition(m) for m in override.exclude]}]}


def served_targeting(event: FlagChangeEvent) -> dict[str, Any] | None:
    """The targeting the flagd document carries for a flag state (module docstring).

    Without a rule (or while pinned) and without segment overrides this is the weights'
    ``fractional``, or ``None`` when the weights leave nobody but the default.
    """
    inner = _gated(event, _served_rule(event))
    if not event.segments:
        return inner
    conditions = [override_condition(o) for o in event.segments]
    killed = conditions[0] if len(conditions) == 1 else {"or": conditions}
    return {"if": [killed, event.default_variant, inner]}


def _gated(event: FlagChangeEvent, inner: dict[str, Any] | None) -> dict[str, Any] | None:
    """``inner`` behind a rollout-by-segment gate (``event.rollout_gate``): completed segments
    get the candidate at the last step's share, the current segment ``inner``, everyone else
    the control. No gate once the candidate is killed or pinned away."""
    gate = event.rollout_gate
    if gate is None or event.pinned is not None:
        return inner
    cand = event.variants.get(gate.candidate)
    if cand is None or cand.killed or gate.control not in event.variants:
        return inner
    out: dict[str, Any] | None = (
        inner if gate.current is None else {"if": [gate.current, inner, gate.control]}
    )
    if gate.done:
        share = gate.done_percent
        final: Any = (
            gate.candidate
            if share >= 100
            else {"fractional": [[gate.control, 100 - share], [gate.candidate, share]]}
            if share > 0
            else gate.control
        )
        done = gate.done[0] if len(gate.done) == 1 else {"or": list(gate.done)}
        out = {"if": [done, final, out]}
    return out


def _served_rule(event: FlagChangeEvent) -> dict[str, Any] | None:
    split = fractions(event)
    weights: dict[str, Any] | None = (
        {"fractional": [[name, weight] for name, weight in split]} if split else None
    )
    rule = event.targeting
    if rule is None or event.pinned is not None:
        return weights
    default = event.default_variant
    default_state = event.variants.get(default)
    default_live = default_state is not None and not default_state.killed
    live = [name for name, state in event.variants.items() if not state.killed]
    killed = [name for name, state in event.variants.items() if state.killed and name != default]
    branches: list[Any] = [{"in": [rule, live]}, rule]
    branches += [
        branch
        for name in _BOOLEAN_NAMES
        if name in live
        for branch in (_yields_boolean(rule, name), name)
    ]
    if killed and default_live:
        branches += [{"in": [rule, killed]}, default]
        for name in _BOOLEAN_NAMES:
            if name in killed:
                branches += [_yields_boolean(rule, name), default]
    branches.append(weights)
    return {"if": branches}


def _yields_boolean(rule: Any, name: str) -> dict[str, Any]:
    """JSON Logic that holds when ``rule`` yields the boolean that flagd names ``name``.

    ``in`` cannot test it: a boolean is not in a list of strings. ``===`` alone does not either:
    panzi-json-logic (flagd's Python core) compares with Python's ``==``, where ``1 == True`` and
    ``0 == False``, while flagd's Go and JavaScript evaluators compare strictly. ``cat`` tells
    them apart in every interpreter: a boolean becomes "true"/"false" (Go, JavaScript) or
    "True"/"False" (panzi), a number its digits, and a string that equals a boolean never passes
    ``===``. So a rule yielding ``1`` names no variant anywhere, as in flagd.
    """
    value = name == "true"
    return {
        "and": [
            {"===": [rule, value]},
            {"in": [{"cat": [rule]}, [name, name.capitalize()]]},
        ]
    }


def evaluate(
    flag: str,
    rule: Any,
    targeting_key: str | None,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """The result of ``rule`` for one context, exactly as flagd's in-process evaluator builds it.

    Raises what the interpreter raises (e.g. ``ReferenceError`` for an unknown operator); flagd
    then serves the caller's default, and so should the caller of this function.
    """
    data: dict[str, Any] = dict(attributes) if attributes else {}
    data["$flagd"] = {"flagKey": flag, "timestamp": int(time.time())}
    data["targetingKey"] = targeting_key
    return jsonLogic(rule, data, OPERATORS)


def variant_name(result: Any) -> str | None:
    """A rule's result as flagd names a variant: booleans lower-cased, others as strings."""
    if result is None:
        return None
    if isinstance(result, bool):
        return str(result).lower()
    return result if isinstance(result, str) else str(result)
