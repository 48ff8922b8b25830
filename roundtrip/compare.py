"""Are two checkpoints the same model? The engine of `clipconv compare` and `roundtrip.testing.assert_equivalent`.

Both are read with the readers conversion uses (nothing in them is run), understood by their formats' entries,
and mapped by the schema into one key layout, A's. Then: their architectures, field by field; their tensors,
one at a time (keys, shapes, dtypes, and values compared bit for bit in the wider dtype, else max |difference|),
giving each one's memory back as it goes; and, unless left out, what each side's own model code computes on
the same tokens and images, layer by layer, as conversion checks it (`roundtrip.verify`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from roundtrip import diffusers_folder, formats, hub, mapping, single_file, verify
from roundtrip.errors import ClipconvError
from roundtrip.formats import Loaded, SourceOptions
from roundtrip.schema import TOWERS
from roundtrip.strided import Joined

TOLERANCE = verify.TOLERANCE  # of every output, as conversion checks them


@dataclass(frozen=True)
class TensorComparison:
    """One tensor of either side, by its name in A's layout."""

    name: str
    # "identical", "equal within tolerance", "different", "transposed" (a square matrix whose values are the other's
    # transpose), "shape differs", "only in A", "only in B"
    status: str
    a_dtype: str | None
    b_dtype: str | None
    a_shape: list[int] | None
    b_shape: list[int] | None
    max_abs_difference: float | None  # None where values cannot be compared

    @property
    def dtype_differs(self) -> bool:
        return None not in (self.a_dtype, self.b_dtype) and self.a_dtype != self.b_dtype


@dataclass(frozen=True)
class SideReport:
    path: str
    format: str  # e.g. "OpenAI CLIP checkpoint, TorchScript archive"
    architecture: dict[str, object]  # Architecture.semantics()
    notes: list[str] = field(default_factory=list)  # how it was read: what was assumed, which config was used


@dataclass
class Report:
    """What `compare` found; `same` is the verdict, `causes` why not."""

    a: SideReport
    b: SideReport
    tensors: list[TensorComparison]
    tolerance: float
    weights_tolerance: float
    max_logit_difference: float | None = None  # None when the models were not run
    # Each output's largest |difference| (`references.output_names`: every layer, pooled, projected, the logits), as
    # conversion checks them; None when the models were not run.
    outputs: verify.Agreement | None = None
    logits_note: str | None = None  # why logits were not compared
    architecture_differences: list[str] = field(default_factory=list)

    @property
    def causes(self) -> list[str]:
        causes = [f"architecture: {difference}" for difference in self.architecture_differences]
        for status, what in (("only in A", "missing in B"), ("only in B", "missing in A"),
                             ("shape differs", "shapes differ"), ("different", "values differ"),
                             ("transposed", "transposed (each the other's transpose: a projection copied "
                                            "across layouts without its transpose)")):
            names = [t.name for t in self.tensors if t.status == status]
            if names:
                causes.append(f"{len(names)} tensor(s) {what}: {mapping.describe_keys(names, limit=4)}")
        if self.outputs is not None and self.outputs.diverges_at(self.tolerance) is not None:
            causes.append(self.outputs.describe(self.tolerance))
        return causes

    @property
    def same(self) -> bool:
        return not self.causes

    @property
    def verdict(self) -> str:
        if self.same:
            return "same model"
        return "different: " + "; ".join(self.causes)

    def text(self) -> str:
        """The report for people: a few lines, the verdict last."""
        lines = []
        for name, side in (("A", self.a), ("B", self.b)):
            lines.append(f"{name}             {side.path} ({side.format})")
            lines += [f"  note        {note}" for note in side.notes]
        if self.architecture_differences:
            lines += [f"architecture  {difference}" for difference in self.architecture_differences]
        else:
            lines.append("architecture  the same")
        counts = {status: sum(t.status == status for t in self.tensors) for status in
                  ("identical", "equal within tolerance", "different", "transposed", "shape differs", "only in A",
                   "only in B")}
        retyped = sum(t.dtype_differs for t in self.tensors)
        lines.append(f"tensors       {len(self.tensors)}: " + ", ".join(f"{n} {status}" for status, n in
                                                                      counts.items() if n)
                     + (f"; {retyped} in another dtype" if retyped else ""))
        for tensor in self.tensors:
            if tensor.status not in ("identical",):
                difference = "" if tensor.max_abs_difference is None else \
                    f", max |difference| {tensor.max_abs_difference:.3g}"
                lines.append(f"  {tensor.status:<13} {tensor.name} ({_side_text(tensor, 'a')} / "
                             f"{_side_text(tensor, 'b')}{difference})")
        if self.outputs is not None:
            where, largest = self.outputs.largest
            lines.append(f"outputs       max |difference| {largest:.3g} at {where}, over {self.outputs.scope()} "
                         f"(tolerance {self.tolerance:g})")
            if self.max_logit_difference is not None:
                lines.append(f"logits        max |difference| {self.max_logit_difference:.3g}")
        else:
            lines.append(f"logits        not compared ({self.logits_note})")
        lines.append(f"verdict       {self.verdict}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The whole report as plain JSON data (fields documented in the README)."""
        return {
            "verdict": "same" if self.same else "different",
            "same": self.same,
            "causes": self.causes,
            "a": dataclasses.asdict(self.a),
            "b": dataclasses.asdict(self.b),
            "architecture_differences": self.architecture_differences,
            "tolerance": self.tolerance,
            "weights_tolerance": self.weights_tolerance,
            "logits": {"max_abs_difference": _finite(self.max_logit_difference), "note": self.logits_note},
            "outputs": None if self.outputs is None else {name: _finite(difference) for name, difference in
                                                          self.outputs.differences.items()},
            "tensors": [{**dataclasses.asdict(t), "max_abs_difference": _finite(t.max_abs_difference)}
                        for t in self.tensors],
        }


def _side_text(tensor: TensorComparison, side: str) -> str:
    dtype, shape = getattr(tensor, f"{side}_dtype"), getattr(tensor, f"{side}_shape")
    return "absent" if dtype is None else f"{dtype} {shape}"


def _finite(value: float | None):
    """JSON has no NaN or infinity: those are written as strings."""
    return value if value is None or math.isfinite(value) else str(value)


def compare(a: Path | str, b: Path | str, *, tolerance: float = TOLERANCE, weights_tolerance: float = 0.0,
            logits: bool = True, options_a: SourceOptions = SourceOptions(),
            options_b: SourceOptions = SourceOptions(), tower: str | None = None, offline: bool = False) -> Report:
    """Compare the checkpoints at `a` and `b` (any formats clipconv reads, in any combination; a path, or a
    Hugging Face repository name, read from the cache, downloaded first unless `offline`); of `tower` ("text" or
    "vision") alone, if given."""
    (first, side_a), (second, side_b) = (_load(path, options, side, tower, offline)
                                         for path, options, side in ((a, options_a, "a"), (b, options_b, "b")))
    return _report(first, side_a, second, side_b, tolerance, weights_tolerance, logits)


def compare_encoders(single_file_path: Path | str, folder: Path | str, *, tolerance: float = TOLERANCE,
                     weights_tolerance: float = 0.0, logits: bool = True, offline: bool = False) -> dict[str, Report]:
    """Each CLIP text encoder of a diffusion model's single file against its diffusers component in `folder` (as
    `to-diffusers` writes them, or a pipeline's folder), the encoder taken as diffusers keeps it (Stable Diffusion
    2.x's without its last block, SD3's CLIP-L with the identity projection): one report per encoder found in
    both, by the encoder's name."""
    try:
        folder = hub.resolve(folder, offline).path
    except ClipconvError as error:
        raise error.on_side("b") from None
    try:
        path = hub.resolve(single_file_path, offline).path
        found = single_file.found_in(path)
        pairs = diffusers_folder.components_in(folder, found, path)
    except ClipconvError as error:
        raise error.on_side("a") from None
    reports = {}
    for encoder, component in pairs:
        try:
            loaded = formats.load(single_file.encoder_format(found, encoder), path, SourceOptions())
            kept, notes, _ = diffusers_folder.component_of(loaded, encoder)
        except ClipconvError as error:
            raise error.on_side("a") from None
        side_a = SideReport(str(path), loaded.source.described(loaded.architecture), kept.architecture.semantics(),
                            [*kept.source.notes, *notes])
        second, side_b = _load(component, SourceOptions(), "b", None)
        reports[encoder.name] = _report(kept, side_a, second, side_b, tolerance, weights_tolerance, logits)
    return reports


def _report(first: Loaded, side_a: SideReport, second: Loaded, side_b: SideReport, tolerance: float,
            weights_tolerance: float, logits: bool) -> Report:
    """Two sides read and understood, compared."""
    sides = [first, second]
    report = Report(side_a, side_b, [], tolerance, weights_tolerance)
    report.architecture_differences = _architecture_differences(sides[0], sides[1])
    layout = sides[0].source.format.layout
    weights = [mapping.convert(side.tensors, side.source.format.layout, layout, side.towers) for side in sides]
    report.tensors = _compare_tensors(weights[0], weights[1], weights_tolerance, [s.source.release for s in sides])
    for side in sides:  # a damaged file is an error, not a difference
        side.source.check()
    if not logits:
        report.logits_note = "--no-logits"
    elif sides[0].shapes != sides[1].shapes:
        report.logits_note = "the shapes differ, so no probe fits both models"
    else:
        report.outputs = _agreement(sides, weights, layout)
        report.max_logit_difference = report.outputs.logits
    return report


def _load(source: Path | str, options: SourceOptions, side: str, tower: str | None,
          offline: bool = False) -> tuple[Loaded, SideReport]:
    """One side read and understood (of `tower` alone, if given), and what it is; its refusals name the side's
    own options."""
    try:
        resolved = hub.resolve(source, offline)
        path = resolved.path
        detected = single_file.detect(path, options) or formats.detect(path, options)
        loaded = formats.load(detected.format, path, detected.options)
        described = loaded.source.described(loaded.architecture)  # what it is, before a tower is taken out
        if tower is None and detected.format.towers != TOWERS:
            tower = detected.format.towers[0]  # a format of one tower (a text encoder): as if chosen
        cut, notes = (loaded, []) if tower is None else formats.tower_alone(loaded, tower)
    except ClipconvError as error:
        raise error.on_side(side) from None
    notes = [*([resolved.note] if resolved.note else []), *detected.notes, *notes, *cut.source.notes]
    return cut, SideReport(str(source), described, cut.architecture.semantics(), notes)


def _architecture_differences(a: Loaded, b: Loaded) -> list[str]:
    first, second = a.architecture.semantics(), b.architecture.semantics()  # a ResNet has fewer numbers than a ViT
    return [f"{name} is {_value(first, name)} in A, {_value(second, name)} in B"
            for name in dict.fromkeys([*first, *second]) if _value(first, name) != _value(second, name)]


def _value(semantics: dict[str, object], name: str) -> str:
    return repr(semantics[name]) if name in semantics else "absent"


def _compare_tensors(a: dict, b: dict, weights_tolerance: float, releases) -> list[TensorComparison]:
    compared = []
    for name in [*a, *(key for key in b if key not in a)]:
        compared.append(_compare_one(name, a.get(name), b.get(name), weights_tolerance))
        for release in releases:  # hand the mapped pages back: two bigG checkpoints are 20 GB
            release()
    return compared


def _compare_one(name: str, a, b, weights_tolerance: float) -> TensorComparison:
    described = [(None, None) if t is None else (t.dtype.name, list(t.shape)) for t in (a, b)]
    (a_dtype, a_shape), (b_dtype, b_shape) = described

    def result(status: str, difference: float | None = None) -> TensorComparison:
        return TensorComparison(name, status, a_dtype, b_dtype, a_shape, b_shape, difference)

    if a is None or b is None:
        return result("only in A" if b is None else "only in B")
    if a_shape != b_shape:
        return result("shape differs")
    first, second = _wider(_values(a), _values(b))
    if _same_bits(first, second):
        return result("identical", 0.0)
    difference = _max_abs_difference(first, second)
    if difference > weights_tolerance and first.ndim == 2 and _same_bits(first, second.T):
        return result("transposed", difference)  # the trap of square projections (SDXL's ViT-bigG)
    return result("equal within tolerance" if difference <= weights_tolerance else "different", difference)


def _values(tensor):
    """A tensor's values as a numpy array (bfloat16 widened to float32 exactly, by its bits)."""
    import numpy

    if isinstance(tensor, Joined):
        return numpy.concatenate([_values(part) for part in tensor.parts])
    return tensor.values()


def _wider(a, b):
    """Both arrays in one dtype that holds every value of either exactly: float32 where both are floats of up to 32
    bits (bfloat16 arrives widened), float64 otherwise."""
    import numpy

    if a.dtype == b.dtype:
        return a, b
    small_floats = all(array.dtype.kind == "f" and array.dtype.itemsize <= 4 for array in (a, b))
    common = numpy.float32 if small_floats else numpy.float64
    return a.astype(common), b.astype(common)


def _same_bits(a, b) -> bool:
    """Whether two arrays of one dtype hold the same bits (so -0.0 is not 0.0, and a NaN is the same NaN)."""
    import numpy

    unsigned = numpy.dtype(f"u{a.dtype.itemsize}")
    return bool(numpy.array_equal(numpy.ascontiguousarray(a).view(unsigned), numpy.ascontiguousarray(b).view(unsigned)))


def _max_abs_difference(a, b) -> float:
    """The largest |a - b| of arrays whose bits differ (so not empty): the same value on both sides (infinity and
    NaN included) differs by 0, NaN on one side only by infinity."""
    import numpy

    with numpy.errstate(invalid="ignore", over="ignore"):  # inf - inf, and float64 extremes: handled below
        difference = numpy.abs(a.astype(numpy.float64) - b.astype(numpy.float64))
    same = (a == b) | (numpy.isnan(a) & numpy.isnan(b))
    difference = numpy.where(same, 0.0, difference)
    difference = numpy.where(numpy.isnan(difference), numpy.inf, difference)
    return float(difference.max())


def _agreement(sides: list[Loaded], weights: list[dict], layout: str) -> verify.Agreement:
    """Each side's own model code, built from its own config, on the same probe tokens and images."""
    architecture = sides[0].architecture
    images, tokens = verify.probe_images(architecture), verify.probe_tokens(architecture)
    outputs = []
    for side, side_weights in zip(sides, weights, strict=True):
        reference = side.source.format.side(side.source.config, side.architecture)
        outputs.append(verify.reference_outputs(reference, side_weights, layout, side.architecture, images, tokens))
    return verify.agreement(*outputs)
