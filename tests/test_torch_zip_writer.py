"""The torch.save layout clipconv writes without importing torch is the one pickling torch's own objects gives."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from roundtrip import torch_zip
from roundtrip.dtypes import DTYPES
from roundtrip.testing import tensor_specs


class _StorageRef:
    def __init__(self, storage_type, key: str, numel: int):
        self.storage_type, self.key, self.numel = storage_type, key, numel


class _TensorReduce:
    def __init__(self, storage: _StorageRef, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride = torch.empty(self.shape, device="meta").stride()
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def pickled_with_torch(specs: dict) -> bytes:
    """data.pkl for these (dtype name, shape) specs, pickling torch's real storage classes and rebuild function."""
    state = OrderedDict(
        (key, _TensorReduce(_StorageRef(getattr(torch, DTYPES[dtype].storage), str(number),
                                        int(torch.Size(shape).numel())), shape))
        for number, (key, (dtype, shape)) in enumerate(specs.items())
    )
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(state)
    return buffer.getvalue()


@settings(max_examples=50, deadline=None)
@given(tensor_specs)
def test_data_pkl_is_byte_identical_to_pickling_torchs_own_objects(specs):
    ours = torch_zip._pickle_state_dict({key: (DTYPES[dtype], shape) for key, (dtype, shape) in specs.items()})
    assert ours == pickled_with_torch(specs)


@settings(max_examples=20, deadline=None)
@given(tensor_specs, st.booleans())
def test_torch_load_reads_what_was_written(tmp_path_factory, specs, read_back):
    tensors = {key: torch.zeros(shape, dtype=getattr(torch, dtype)) for key, (dtype, shape) in specs.items()}
    path = tmp_path_factory.mktemp("zip") / "state.pt"
    torch_zip.write_state_dict(path, tensors, torch_zip.Cast(), read_back=read_back)
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(tensors)
    assert all(loaded[key].dtype == tensors[key].dtype and loaded[key].shape == tensors[key].shape for key in tensors)


def test_the_same_tensors_give_the_same_bytes_whenever_written(tmp_path, monkeypatch):
    import time

    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    torch_zip.write_state_dict(tmp_path / "first.pt", tensors, torch_zip.Cast(), records={"note.json": b"{}"})
    later = time.time() + 3 * 86400
    monkeypatch.setattr(time, "time", lambda: later)  # what zipfile dates a record by, unless told otherwise
    monkeypatch.setattr(time, "localtime", lambda seconds=None: time.gmtime(later))
    torch_zip.write_state_dict(tmp_path / "second.pt", tensors, torch_zip.Cast(), records={"note.json": b"{}"})
    assert (tmp_path / "first.pt").read_bytes() == (tmp_path / "second.pt").read_bytes()
