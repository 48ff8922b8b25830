"""Casting while writing gives exactly the bytes of torch's `tensor.to(dtype)`, however the free space falls,
whether numpy casts (views of file bytes) or torch does (torch tensors, bfloat16)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from roundtrip.casting import PARALLEL_CAST_ELEMENTS, Cast, ScratchSink, cast_into
from roundtrip.dtypes import DTYPES, dtype_of, raw_bytes
from roundtrip.strided import Joined, Strided
from roundtrip.testing import cast_cases


class _FixedSpace:
    """A sink whose free space is `size` bytes each time, like blocks of that size."""

    def __init__(self, size: int):
        self._space, self.received = bytearray(size), bytearray()

    def reserve(self) -> memoryview:
        return memoryview(self._space)

    def commit(self, count: int) -> None:
        self.received += self._space[:count]

    def write(self, data) -> int:
        self.received += bytes(data)
        return len(data)


def _as_view(tensor: torch.Tensor) -> Strided:
    """The tensor as a reader hands it out, a view of bytes, transposed where the tensor is."""
    if tensor.dim() == 2 and not tensor.is_contiguous():
        return _as_view(tensor.t()).t()
    return Strided.of_buffer(bytearray(raw_bytes(tensor)), dtype_of(tensor), tuple(tensor.shape))


@settings(max_examples=80, deadline=None)
@given(cast_cases, st.integers(1, 5000), st.booleans())
def test_cast_into_any_space_gives_the_bytes_of_torchs_cast(case, space, view):
    tensor, dtype = case
    sink = _FixedSpace(space)
    cast_into(sink, _as_view(tensor) if view else tensor, dtype)
    assert bytes(sink.received) == bytes(raw_bytes(tensor.to(dtype.torch())))


@settings(max_examples=30, deadline=None)
@given(cast_cases, st.integers(1, 5000), st.booleans())
def test_cast_into_scratch_gives_the_bytes_of_torchs_cast(case, space, view):
    tensor, dtype = case
    received = bytearray()
    cast_into(ScratchSink(received.extend, memoryview(bytearray(space))), _as_view(tensor) if view else tensor, dtype)
    assert bytes(received) == bytes(raw_bytes(tensor.to(dtype.torch())))


def test_joined_views_are_written_part_after_part():
    parts = [torch.randn(3, 4, generator=torch.Generator().manual_seed(n)).half() for n in range(3)]
    sink = _FixedSpace(40)
    cast_into(sink, Joined(tuple(map(_as_view, parts))), DTYPES["float32"])
    assert bytes(sink.received) == bytes(raw_bytes(torch.cat(parts).float()))


def test_a_cast_that_changes_nothing_passes_the_input_bytes_through_uncopied():
    tensor = torch.arange(12, dtype=torch.float32)
    sink = _FixedSpace(16)
    cast_into(sink, _as_view(tensor), DTYPES["float32"])
    assert bytes(sink.received) == bytes(raw_bytes(tensor))
    assert sink._space == bytearray(16)  # the free space was never used


def test_numpy_keeps_every_nan_payload_through_a_float16_round_trip():
    every_half = Strided.of_buffer(bytearray(range(256)) * 256 * 2, DTYPES["float16"], (65536,))
    widened, narrowed = _FixedSpace(2**20), _FixedSpace(2**20)
    cast_into(widened, every_half, DTYPES["float32"])
    cast_into(narrowed, Strided.of_buffer(widened.received, DTYPES["float32"], (65536,)), DTYPES["float16"])
    assert narrowed.received == every_half.raw()


def test_pieces_large_enough_to_cast_on_two_cores_give_the_same_bytes():
    rows = PARALLEL_CAST_ELEMENTS // 512 + 7
    tensor = torch.randn(rows, 1024, generator=torch.Generator().manual_seed(1)).half()
    for source in (tensor, tensor.t()):
        sink = _FixedSpace(2**23)
        cast_into(sink, _as_view(source), DTYPES["float32"])
        assert bytes(sink.received) == bytes(raw_bytes(source.float()))


@settings(max_examples=40, deadline=None)
@given(cast_cases, st.booleans())
def test_casting_into_memory_gives_the_bytes_of_torchs_cast(case, view):
    tensor, dtype = case
    source = _as_view(tensor) if view else tensor
    (cast,) = Cast(recorded={"w": dtype.name}).in_memory({"w": source}).values()
    assert dtype_of(cast) == dtype and tuple(cast.shape) == tuple(tensor.shape)
    if dtype_of(source) == dtype:
        assert cast is source  # nothing to cast: the view itself, no copy
    else:
        assert bytes(cast.raw()) == bytes(raw_bytes(tensor.to(dtype.torch())))


def test_casting_into_memory_releases_the_input_after_each_tensor():
    tensors = {name: _as_view(torch.ones(2, 3, dtype=torch.float16)) for name in "abc"}
    released = []
    Cast.from_choice("float32").in_memory(tensors, after_each=lambda: released.append(True))
    assert len(released) == len(tensors)


def test_casting_into_memory_keeps_every_nan_payload_through_a_float16_round_trip():
    # When verifying, the file is written from this copy: every NaN payload must survive, as when casting
    # while writing (torch's cast would set the quiet bit).
    every_half = Strided.of_buffer(bytearray(torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16)
                                             .numpy().tobytes()), DTYPES["float16"], (2**16,))
    (widened,) = Cast.from_choice("float32").in_memory({"w": every_half}).values()
    narrowed = _FixedSpace(2**20)
    cast_into(narrowed, widened, DTYPES["float16"])
    assert bytes(narrowed.received) == bytes(every_half.raw())


def test_casting_joined_parts_into_memory_gives_the_bytes_of_torchs_cast():
    parts = [torch.randn(3, 4, generator=torch.Generator().manual_seed(n)) for n in range(3)]
    (cast,) = Cast.from_choice("float16").in_memory({"w": Joined(tuple(map(_as_view, parts)))}).values()
    assert bytes(cast.raw()) == bytes(raw_bytes(torch.cat(parts).half()))


@given(dtype=st.sampled_from(["float32", "float16", "bfloat16", "int64"]), transposed=st.booleans(),
       seed=st.integers(0, 2**16))
def test_a_views_values_and_bytes_are_torchs_in_every_dtype_and_layout(dtype, transposed, seed):
    """`Strided.values()` (bfloat16 widened by its bits) and `tobytes()` (a transposed view copied in order) give
    what torch gives for the same tensor."""
    torch.manual_seed(seed)
    tensor = (torch.randn(3, 5) * 100).to(getattr(torch, dtype))
    tensor = tensor.t() if transposed else tensor
    view = _as_view(tensor)
    assert view.is_contiguous() is not transposed
    assert torch.equal(torch.from_numpy(view.values().copy()), tensor.float() if dtype == "bfloat16" else tensor)
    assert view.tobytes() == bytes(raw_bytes(tensor))
