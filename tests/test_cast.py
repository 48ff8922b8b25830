"""Casting while writing gives exactly the bytes of `tensor.to(dtype)`, however the free space falls."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from roundtrip.dtypes import ScratchSink, cast_into, raw_bytes

from strategies import cast_cases


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


@settings(max_examples=80, deadline=None)
@given(cast_cases, st.integers(1, 5000))
def test_cast_into_any_space_gives_the_bytes_of_a_plain_cast(case, space):
    tensor, dtype = case
    sink = _FixedSpace(space)
    cast_into(sink, tensor, dtype)
    assert bytes(sink.received) == bytes(raw_bytes(tensor.to(dtype)))


@settings(max_examples=30, deadline=None)
@given(cast_cases, st.integers(1, 5000))
def test_cast_into_scratch_gives_the_bytes_of_a_plain_cast(case, space):
    tensor, dtype = case
    received = bytearray()
    cast_into(ScratchSink(received.extend, memoryview(bytearray(space))), tensor, dtype)
    assert bytes(received) == bytes(raw_bytes(tensor.to(dtype)))


def test_a_cast_that_changes_nothing_passes_the_input_bytes_through_uncopied():
    tensor = torch.arange(12, dtype=torch.float32)
    sink = _FixedSpace(16)
    cast_into(sink, tensor, torch.float32)
    assert bytes(sink.received) == bytes(raw_bytes(tensor))
    assert sink._space == bytearray(16)  # the free space was never used
