"""Both conversion directions, derived from the one table in `roundtrip.schema`.

Pure state-dict functions: no files, no dtype changes. `to_hf` applies each
rule's operation; `to_openai` swaps each rule's sides and applies the declared
inverse. Every source key must match exactly one rule, every rule's group of
source keys must be complete, and every target key is produced exactly once;
anything else raises `MappingError` naming the keys.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping

import torch

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


class Deferred:
    """A tensor that an allocating operation (fusing q/k/v) computes only when it is cast or written,
    so that a converter streaming tensor by tensor never holds a whole model's worth of them."""

    def __init__(self, compute, shape: torch.Size, dtype: torch.dtype):
        self.compute, self.shape, self.dtype = compute, shape, dtype

    def numel(self) -> int:
        return math.prod(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def to(self, dtype: torch.dtype) -> torch.Tensor:
        return self.compute().to(dtype)


def apply(
    state_dict: Mapping, conversions: tuple[Conversion, ...], ignored: Iterable[str] = (), deferred: bool = False
) -> dict:
    converted = {}
    for step in plan(state_dict.keys(), conversions, ignored):
        inputs = [state_dict[key] for key in step.sources]
        try:
            if deferred and step.conversion.op.allocates:
                outputs = _deferred_outputs(step.conversion.op, inputs)
            else:
                outputs = step.conversion.op(inputs)
        except OperationError as error:
            raise MappingError(f"{describe_keys(step.sources)}: {error}") from None
        converted.update(zip(step.targets, outputs))
    return converted


def _deferred_outputs(op: Operation, inputs: list) -> list[Deferred]:
    shapes = op([torch.empty(t.shape, dtype=t.dtype, device="meta") for t in inputs])  # checks, allocates nothing
    return [
        Deferred(lambda index=index: op(inputs)[index], shape.shape, shape.dtype)
        for index, shape in enumerate(shapes)
    ]


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


def to_openai(hf_state_dict: Mapping, deferred: bool = False) -> dict:
    """HF `CLIPModel` state dict -> OpenAI `clip.model.CLIP` state dict (same tensors, same dtypes).

    With `deferred`, fused q/k/v tensors are `Deferred`: computed when cast or written.
    """
    return apply(hf_state_dict, TO_OPENAI, ignored=HF_IGNORED_KEYS, deferred=deferred)


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
