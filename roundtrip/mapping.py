"""Both conversion directions, derived from the one table in `roundtrip.schema`.

Pure state-dict functions: no files, no dtype changes. `to_hf` applies each
rule's operation; `to_openai` swaps each rule's sides and applies the declared
inverse. Every source key must match exactly one rule, every rule's group of
source keys must be complete, and every target key is produced exactly once;
anything else raises `MappingError` naming the keys. `check_keys` says, before
any of that, whether a set of keys is a complete checkpoint of a layout, and
if it is not, what it is instead.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from roundtrip.ops import Operation, OperationError
from roundtrip.schema import (
    BLOCK_FIELD,
    LAYOUTS,
    OPTIONAL_KEYS,
    PLACEHOLDER_VALUES,
    PLACEHOLDERS,
    RULES,
    STAGE_FIELD,
    TOWERS,
    UNSUPPORTED_VARIANTS,
    VISION_KINDS,
    Rule,
)

_FIELD = re.compile(r"\{(\w+)\}")


class MappingError(ValueError):
    """The keys of a checkpoint do not fit the schema."""


class UnsupportedArchitecture(MappingError):
    """A real CLIP checkpoint that the target framework cannot represent."""


class OtherLayout(MappingError):
    """Keys of which none belongs to the layout asked for; `found` is the layout they belong to, if any."""

    def __init__(self, message: str, found: str | None):
        super().__init__(message)
        self.found = found


class IncompleteCheckpoint(MappingError):
    """A checkpoint without some of the tensors its architecture needs."""


def describe_keys(keys: Iterable[str], limit: int = 8, total: int | None = None) -> str:
    keys = sorted(keys)
    total = len(keys) if total is None else total
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {total - min(limit, len(keys))} more)" if total > min(limit, len(keys)) else "")


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

    def expand(self, values: Mapping[str, Iterable[str]]) -> list[str]:
        """Every key this pattern gives with each field taking each of its `values`."""
        names = sorted(self.fields)
        choices = itertools.product(*(values[name] for name in names))
        return [self.format(dict(zip(names, chosen, strict=True))) for chosen in choices]


@cache
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
    op: Operation | None  # None: read and checked, never mapped (OPENAI_ONLY)
    tower: str | None  # None: shared by the two towers
    block: bool = False  # one per residual block ({i})
    projection: bool = False  # a tower's projection, which a tower alone may lack
    kind: str | None = None  # the kind of vision tower it belongs to alone (schema.VISION_KINDS); None: any

    def optional(self, towers: tuple[str, ...]) -> bool:
        """Whether a complete checkpoint of a model with `towers` may lack it: a tower alone may lack its
        projection and what the two towers share (logit_scale)."""
        return set(towers) != set(TOWERS) and (self.projection or self.tower is None)


def _forward(rule: Rule) -> Conversion:
    return Conversion(tuple(map(Pattern, rule.openai)), tuple(map(Pattern, rule.hf)), rule.op, rule.tower,
                      rule.block, rule.projection, rule.kind)


def _backward(rule: Rule) -> Conversion:
    return Conversion(tuple(map(Pattern, rule.hf)), tuple(map(Pattern, rule.openai)), rule.op.inverse, rule.tower,
                      rule.block, rule.projection, rule.kind)


def _of_towers(conversions: tuple[Conversion, ...], towers: tuple[str, ...]) -> tuple[Conversion, ...]:
    """The conversions of a model with just `towers`: theirs, and the shared ones (which a tower alone may
    keep)."""
    return tuple(c for c in conversions if c.tower in towers or c.tower is None)


TO_HF = tuple(_forward(rule) for rule in RULES if rule.hf)
TO_OPENAI = tuple(_backward(rule) for rule in RULES if rule.hf)
# What OpenAI's layout holds and HF's has no place for (a ResNet vision tower): read and checked, never mapped.
OPENAI_ONLY = tuple(_forward(rule) for rule in RULES if not rule.hf)


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
        converted.update(zip(step.targets, outputs, strict=True))
    return converted


def to_hf(openai_state_dict: Mapping, towers: tuple[str, ...] = TOWERS) -> dict:
    """OpenAI `clip.model.CLIP` state dict -> HF `CLIPModel` state dict (same tensors, same dtypes)."""
    _reject_unsupported(openai_state_dict.keys())
    if "vision" in towers and vision_kind(openai_state_dict.keys()) == "resnet":
        raise UnsupportedArchitecture("this is a ResNet CLIP (RN50 family): transformers' CLIPModel has no ResNet "
                                      "vision tower")
    return apply(openai_state_dict, _of_towers(TO_HF, towers), ignored=OPTIONAL_KEYS["openai"])


def to_openai(hf_state_dict: Mapping, towers: tuple[str, ...] = TOWERS) -> dict:
    """HF `CLIPModel` state dict -> OpenAI `clip.model.CLIP` state dict (same tensors, same dtypes).

    Fused q/k/v of `Strided` views are `Joined` (written part by part, never computed).
    """
    return apply(hf_state_dict, _of_towers(TO_OPENAI, towers), ignored=OPTIONAL_KEYS["hf"])


MAPPING = {"openai": TO_HF, "hf": TO_OPENAI}  # layout -> the conversions that map its keys to the other layout
READING = {"openai": TO_HF + OPENAI_ONLY, "hf": TO_OPENAI}  # layout -> the conversions that read its keys


def vision_kind(openai_keys: Iterable[str]) -> str:
    """What the vision tower of `openai_keys` (OpenAI's layout, which open_clip shares) is: "resnet" where it has
    keys only a ResNet has, else "vit" (as clip.model.build_model tells them apart, by their keys)."""
    only = {kind: tuple(c for c in READING["openai"] if c.kind == kind) for kind in VISION_KINDS}
    return "resnet" if any(_matches(key, only["resnet"]) and not _matches(key, only["vit"])
                           for key in openai_keys) else "vit"


def convert(state_dict: Mapping, source: str, target: str, towers: tuple[str, ...] = TOWERS) -> dict:
    """`state_dict` (of a model with `towers`) in layout `source` as the same tensors in layout `target` (the
    same dict's tensors when the layouts are one: OpenAI's and open_clip's keys are the same)."""
    if source == target:
        return dict(state_dict)
    return (to_hf if (source, target) == ("openai", "hf") else to_openai)(state_dict, towers)


def carried_back(table: Mapping[str, object], keys: Iterable[str], layout: str, table_layout: str) -> dict:
    """`table` (values by keys of `table_layout`, such as recorded dtypes) as values by `keys` of `layout`: each
    key takes the value that the keys it maps to share; MappingError where they do not share one."""
    if layout == table_layout:
        return dict(table)
    carried = {}
    for step in plan(keys, MAPPING[layout], ignored=OPTIONAL_KEYS[layout]):
        values = {table[target] for target in step.targets if target in table}
        if len(values) > 1:
            raise MappingError(f"{describe_keys(step.targets)} have different values: {sorted(map(str, values))}")
        carried.update({source: value for source in step.sources for value in values})
    return carried


def without_prefix(state_dict: Mapping, prefix: str) -> dict:
    """The tensors of `state_dict` under `prefix` (a model inside a larger checkpoint), named without it."""
    return {key[len(prefix):]: tensor for key, tensor in state_dict.items() if key.startswith(prefix)}


def with_prefix(state_dict: Mapping, prefix: str) -> dict:
    return {prefix + key: tensor for key, tensor in state_dict.items()}


def keys_in(layout: str, openai_keys: Iterable[str]) -> list[str]:
    """The keys that OpenAI-layout `openai_keys` (complete groups: a projection, a block's in_proj) have in
    `layout`."""
    if layout == "openai":
        return list(openai_keys)
    return [target for step in plan(openai_keys, TO_HF) for target in step.targets]


def describe_blocks(keys: Iterable[str], layout: str) -> list[str]:
    """`keys` (of `layout`) for people: the keys of residual blocks as "text block N" (a ResNet's as "vision
    block STAGE.N"), the others as they are."""
    blocks = tuple(c for c in READING[layout] if c.block)
    named: dict[str, None] = {}
    for key in keys:
        fields = next(((c.tower, found) for c in blocks for pattern in c.sources
                       if (found := pattern.parse(key)) is not None), None)
        if fields is None:
            named[key] = None
            continue
        tower, found = fields
        stage = f"{found[STAGE_FIELD]}." if STAGE_FIELD in found else ""
        named[f"{tower} block {stage}{found[BLOCK_FIELD]}"] = None
    return list(named)


def before_block(state_dict: Mapping, layout: str, tower: str, first_left_out: int) -> dict:
    """`state_dict` (a model in `layout`) without `tower`'s residual blocks `first_left_out` and later."""
    blocks = tuple(c for c in READING[layout] if c.block and c.tower == tower)

    def kept(key: str) -> bool:
        fields = next((found for c in blocks for pattern in c.sources if (found := pattern.parse(key)) is not None),
                      None)
        return fields is None or int(fields[BLOCK_FIELD]) < first_left_out

    return {key: tensor for key, tensor in state_dict.items() if kept(key)}


def towers_of(keys: Iterable[str], layout: str) -> tuple[str, ...]:
    """The towers of which `keys` (of `layout`) hold some tensor, in the order of TOWERS."""
    keys = list(keys)
    return tuple(tower for tower in TOWERS
                 if any(_matches(key, tuple(c for c in READING[layout] if c.tower == tower)) for key in keys))


def of_towers(state_dict: Mapping, layout: str, towers: tuple[str, ...], projections: tuple[str, ...]) -> dict:
    """The tensors of `state_dict` (a model in `layout`) that a model of `towers` holds, with the projections
    of `projections` only; what two towers share (logit_scale) only with both."""
    kept = [c for c in READING[layout] if (c.tower in towers and (not c.projection or c.tower in projections))
            or (c.tower is None and set(towers) == set(TOWERS))]
    return {key: tensor for key, tensor in state_dict.items() if _matches(key, tuple(kept))}


def check_keys(keys: Iterable[str], layout: str, towers: tuple[str, ...] = TOWERS) -> dict[str, int | tuple[int, ...]]:
    """The number of residual blocks per tower of a complete checkpoint in `layout` (of a model with `towers`;
    of a ResNet vision tower, per stage); else a MappingError that says what the keys are: a variant no rule
    converts, another layout or no CLIP at all, keys no rule covers, or which tensors its architecture needs that
    are missing."""
    keys = [key for key in keys if key not in OPTIONAL_KEYS[layout]]
    kind = vision_kind(keys) if layout == "openai" else "vit"
    conversions = tuple(c for c in _of_towers(READING[layout], towers) if c.kind in (None, kind))
    unmatched = [key for key in keys if not _matches(key, conversions)]
    _check_layout(keys, len(keys) - len(unmatched), layout)
    if layout == "openai":  # the variants' keys are open_clip's and OpenAI's
        _reject_unsupported(keys)
    if unmatched:
        _check_one_vision_kind(unmatched, kind, layout)
        raise MappingError(f"{len(unmatched)} key(s) match no rule: {describe_keys(unmatched)}")
    blocks = _block_indices(keys, conversions)
    required = tuple(c for c in conversions if not c.optional(towers))
    missing, total = _missing_keys(set(keys), blocks, required)
    if total:
        raise IncompleteCheckpoint(f"missing {total} tensor(s) that a CLIP of this architecture needs: "
                                   f"{describe_keys(missing, limit=5, total=total)}")
    counts: dict[str, int | tuple[int, ...]] = {}
    for (tower, stage), indices in sorted(blocks.items(), key=lambda group: (group[0][0], group[0][1] or "")):
        counts[tower] = len(indices) if stage is None else (*counts.get(tower, ()), len(indices))
    return counts


UNSUPPORTED = tuple((Pattern(template), what) for template, what in UNSUPPORTED_VARIANTS.items())


def _reject_unsupported(keys: Iterable[str]) -> None:
    for key in keys:
        for pattern, what in UNSUPPORTED:
            if pattern.parse(key) is not None:
                raise UnsupportedArchitecture(f"this is {what} (it has {key})")


def _check_one_vision_kind(unmatched: list[str], kind: str, layout: str) -> None:
    """Refuse keys of another kind of vision tower than `kind`, beside those of `kind`."""
    others = tuple(c for c in READING[layout] if c.kind not in (None, kind))
    mixed = [key for key in unmatched if _matches(key, others)]
    if mixed:
        raise MappingError(f"its vision tower has keys of a ResNet and of a vision transformer (such as "
                           f"{describe_keys(mixed, limit=2)}): no CLIP has both")


def _matches(key: str, conversions: tuple[Conversion, ...]) -> bool:
    return any(pattern.parse(key) is not None for conversion in conversions for pattern in conversion.sources)


def _check_layout(keys: list[str], matched: int, layout: str) -> None:
    """Refuse keys that another layout explains better than `layout` does, or that no layout explains at all
    (a few key names, such as logit_scale, are the same in every layout)."""
    for other, conversions in READING.items():
        found = [key for key in keys if _matches(key, conversions)]
        if other != layout and len(found) > matched:
            example = next(key for key in found if not _matches(key, READING[layout]))
            raise OtherLayout(f"is not {LAYOUTS[layout]} checkpoint: its keys are those of {LAYOUTS[other]} "
                              f"(such as {example})", other)
    if not matched:
        raise OtherLayout(f"is not a CLIP checkpoint: none of its keys is a CLIP key ({describe_keys(keys, limit=3)})",
                          None)


Blocks = dict[tuple[str, str | None], set[int]]  # (tower, stage or None) -> the block indices present


def _block_indices(keys: Iterable[str], conversions: tuple[Conversion, ...]) -> Blocks:
    """The residual-block indices present per tower, and per stage in a ResNet, e.g. {("text", None): {0, 1},
    ("vision", "1"): {0, 1, 2}, ("vision", "2"): {0}, ...}."""
    found: Blocks = {(conversion.tower, stage): set() for conversion in conversions if conversion.block
                     for stage in _stages(conversion)}
    for key in keys:
        for conversion in conversions:
            if not conversion.block:
                continue
            for pattern in conversion.sources:
                fields = pattern.parse(key)
                if fields is not None:
                    found[(conversion.tower, fields.get(STAGE_FIELD))].add(int(fields[BLOCK_FIELD]))
    return found


def _stages(conversion: Conversion) -> tuple[str | None, ...]:
    """The stages a block conversion's blocks are counted in: a ResNet's four, or one (None) for a transformer."""
    return PLACEHOLDER_VALUES[STAGE_FIELD] if STAGE_FIELD in conversion.sources[0].fields else (None,)


def _missing_keys(keys: set[str], blocks: Blocks, conversions) -> tuple[list[str], int]:
    """Some of the keys that a checkpoint with blocks 0..max of each tower (at least one) needs and `keys`
    lacks, and how many it lacks in all."""
    examples, total = [], 0
    for conversion in conversions:
        for values, times in _instances(conversion, blocks):
            absent = [key for pattern in conversion.sources for key in pattern.expand(values) if key not in keys]
            examples += absent
            total += len(absent) * times
    return examples, total


def _instances(conversion: Conversion, blocks: Blocks) -> list[tuple[dict, int]]:
    """The field values a complete checkpoint instantiates the conversion with, each with how many times it
    stands for. Blocks missing whole are stood for by the first of them: a hostile index (block 10**9) must
    not make this enumerate them."""
    if not conversion.block:
        return [(PLACEHOLDER_VALUES, 1)]
    instances = []
    for stage in _stages(conversion):
        present = blocks[(conversion.tower, stage)]
        values = {**PLACEHOLDER_VALUES, **({} if stage is None else {STAGE_FIELD: (stage,)})}
        instances += [({**values, BLOCK_FIELD: (str(index),)}, 1) for index in sorted(present)]
        whole_blocks_missing = max(present, default=0) + 1 - len(present)
        if whole_blocks_missing:
            first = next(index for index in itertools.count() if index not in present)
            instances.append(({**values, BLOCK_FIELD: (str(first),)}, whole_blocks_missing))
    return instances
