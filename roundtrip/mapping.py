"""Both conversion directions, derived from the one table in `roundtrip.schema`.

Pure state-dict functions: no files, no dtype changes. `to_hf` applies each
rule's operation; `to_openai` swaps each rule's sides and applies the declared
inverse. Every source key must match exactly one rule, every rule's group of
source keys must be complete, and every target key is produced exactly once;
anything else raises `MappingError` naming the keys.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping


from roundtrip.ops import Operation, OperationError
from roundtrip.schema import (
    HF_IGNORED_KEYS,
    OPENAI_ARCHIVE_ATTRIBUTES,
    OPENAI_RESNET_PREFIXES,
    PLACEHOLDERS,
    RULES,
    Rule,
)

_FIELD = re.compile(r"\{(\w+)\}")


class MappingError(ValueError):
    """The keys of a checkpoint do not fit the schema."""


class UnsupportedArchitecture(MappingError):
    """A real CLIP checkpoint that the target framework cannot represent."""


def describe_keys(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


@dataclass(frozen=True)
class Pattern:
    """An anchored key template that both parses a key and formats one."""

    template: str

    @property
    def regex(self) -> re.Pattern[str]:
        return _compile(self.template)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(_FIELD.findall(self.template))

    def parse(self, key: str) -> dict[str, str] | None:
        match = self.regex.fullmatch(key)
        return match.groupdict() if match else None

    def format(self, fields: Mapping[str, str]) -> str:
        return self.template.format(**fields)


@lru_cache(maxsize=None)
def _compile(template: str) -> re.Pattern[str]:
    parts = _FIELD.split(template)  # literal, field, literal, field, ...
    regex = "".join(
        re.escape(part) if index % 2 == 0 else f"(?P<{part}>{PLACEHOLDERS[part]})"
        for index, part in enumerate(parts)
    )
    return re.compile(regex)


@dataclass(frozen=True)
class Conversion:
    """One rule in one direction."""

    sources: tuple[Pattern, ...]
    targets: tuple[Pattern, ...]
    op: Operation
    tower: str | None


def _forward(rule: Rule) -> Conversion:
    return Conversion(tuple(map(Pattern, rule.openai)), tuple(map(Pattern, rule.hf)), rule.op, rule.tower)


def _backward(rule: Rule) -> Conversion:
    return Conversion(tuple(map(Pattern, rule.hf)), tuple(map(Pattern, rule.openai)), rule.op.inverse, rule.tower)


TO_HF = tuple(_forward(rule) for rule in RULES)
TO_OPENAI = tuple(_backward(rule) for rule in RULES)


@dataclass(frozen=True)
class Step:
    """One application of a conversion to a complete group of source keys."""

    conversion: Conversion
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]


def plan(keys: Iterable[str], conversions: tuple[Conversion, ...], ignored: Iterable[str] = ()) -> list[Step]:
    """Group `keys` into steps; raise MappingError unless every key is covered exactly once."""
    ignored = set(ignored)
    groups: dict[tuple[int, tuple], dict[int, str]] = defaultdict(dict)
    unmatched, ambiguous = [], []
    for key in keys:
        if key in ignored:
            continue
        matches = [
            (c_index, s_index, fields)
            for c_index, conversion in enumerate(conversions)
            for s_index, pattern in enumerate(conversion.sources)
            if (fields := pattern.parse(key)) is not None
        ]
        if not matches:
            unmatched.append(key)
        elif len(matches) > 1:
            ambiguous.append(key)
        else:
            c_index, s_index, fields = matches[0]
            groups[(c_index, tuple(sorted(fields.items())))][s_index] = key
    if unmatched:
        raise MappingError(f"{len(unmatched)} key(s) match no rule: {describe_keys(unmatched)}")
    if ambiguous:
        raise MappingError(f"key(s) match more than one rule: {describe_keys(ambiguous)}")
    return _steps_from_groups(groups, conversions)


def _steps_from_groups(groups, conversions) -> list[Step]:
    steps, incomplete, produced = [], [], defaultdict(int)
    for (c_index, fields), found in groups.items():
        conversion = conversions[c_index]
        expected = [pattern.format(dict(fields)) for pattern in conversion.sources]
        if len(found) != len(expected):
            incomplete.extend(key for index, key in enumerate(expected) if index not in found)
            continue
        targets = tuple(pattern.format(dict(fields)) for pattern in conversion.targets)
        for target in targets:
            produced[target] += 1
        steps.append(Step(conversion, tuple(expected), targets, fields))
    if incomplete:
        raise MappingError(f"missing key(s) needed with their group: {describe_keys(incomplete)}")
    duplicated = [key for key, count in produced.items() if count > 1]
    if duplicated:
        raise MappingError(f"key(s) would be produced more than once: {describe_keys(duplicated)}")
    return steps


def apply(state_dict: Mapping, conversions: tuple[Conversion, ...], ignored: Iterable[str] = ()) -> dict:
    converted = {}
    for step in plan(state_dict.keys(), conversions, ignored):
        inputs = [state_dict[key] for key in step.sources]
        try:
            outputs = step.conversion.op(inputs)
        except OperationError as error:
            raise MappingError(f"{describe_keys(step.sources)}: {error}") from None
        converted.update(zip(step.targets, outputs))
    return converted


def reject_resnet(keys: Iterable[str]) -> None:
    if any(key.startswith(OPENAI_RESNET_PREFIXES) for key in keys):
        raise UnsupportedArchitecture(
            "this is a ResNet CLIP checkpoint (RN50 family); transformers' CLIPModel has no ResNet vision tower, "
            "only ViT CLIP checkpoints can be converted"
        )


def to_hf(openai_state_dict: Mapping) -> dict:
    """OpenAI `clip.model.CLIP` state dict -> HF `CLIPModel` state dict (same tensors, same dtypes)."""
    reject_resnet(openai_state_dict.keys())
    return apply(openai_state_dict, TO_HF, ignored=OPENAI_ARCHIVE_ATTRIBUTES)


def to_openai(hf_state_dict: Mapping) -> dict:
    """HF `CLIPModel` state dict -> OpenAI `clip.model.CLIP` state dict (same tensors, same dtypes).

    Fused q/k/v of `Strided` views are `Joined` (written part by part, never computed).
    """
    return apply(hf_state_dict, TO_OPENAI, ignored=HF_IGNORED_KEYS)


def block_indices(openai_keys: Iterable[str]) -> dict[str, set[int]]:
    """The residual-block indices present per tower, e.g. {"text": {0, 1}, "vision": {0, 1, 2}}."""
    found: dict[str, set[int]] = defaultdict(set)
    for key in openai_keys:
        for conversion in TO_HF:
            if conversion.tower is None:
                continue
            for pattern in conversion.sources:
                fields = pattern.parse(key)
                if fields is not None:
                    found[conversion.tower].add(int(fields["i"]))
    return dict(found)
