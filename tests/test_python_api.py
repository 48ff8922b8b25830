"""The Python API as the README documents it: the names it exports stay what they are, however often they are
called and whatever else of the package was imported first."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import roundtrip
from roundtrip.errors import ClipconvError

from conftest import read_json

# Every public module of the package: importing any of them must not change what `roundtrip.NAME` is.
PUBLIC_MODULES = sorted(info.name for info in pkgutil.iter_modules(roundtrip.__path__) if not info.name.startswith("_"))


def test_every_exported_name_is_a_function_and_no_module_shares_it():
    assert set(roundtrip.__all__) - {"__version__"} <= {"to_hf", "to_openai", "convert", "convert_to_hf",
                                                         "convert_to_openai", "convert_to_open_clip",
                                                         "convert_to_diffusers", "convert_to_single_file"}
    for name in set(roundtrip.__all__) - {"__version__"}:
        assert name not in PUBLIC_MODULES, f"roundtrip.{name} is both a function and a module"


# In a fresh interpreter: this one imported every module long ago. The README's loop over checkpoints, after
# importing every public module of the package (importing a submodule sets the package's attribute of its name).
_LOOP = """
import importlib, sys
import roundtrip
from roundtrip.errors import ClipconvError
from roundtrip import convert
first = convert
for module in sys.argv[3:]:
    importlib.import_module(f"roundtrip.{module}")
for n in range(10):
    summary = roundtrip.convert(sys.argv[1], f"{sys.argv[2]}-{n}", to="open_clip", verify_logits=False)
    assert summary.tensors > 0
from roundtrip import convert as again
assert callable(again) and again is first, again
print("converted", n + 1)
"""


def test_convert_called_ten_times_after_importing_every_module(tmp_path, demo_state_dict_file):
    done = subprocess.run([sys.executable, "-c", _LOOP, demo_state_dict_file, tmp_path / "out", *PUBLIC_MODULES],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["converted", "10"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"out-{n}" for n in range(10)]


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_importing_a_module_leaves_the_exported_functions_callable(module):
    importlib.import_module(f"roundtrip.{module}")
    for name in set(roundtrip.__all__) - {"__version__"}:
        assert callable(getattr(roundtrip, name)), (module, name)


def test_shard_size_is_taken_as_a_size_with_a_unit_or_refused_with_the_reason(tmp_path, demo_state_dict_file):
    roundtrip.convert_to_hf(demo_state_dict_file, tmp_path / "hf", verify_logits=False, max_shard_bytes="10MB")
    index = read_json(tmp_path / "hf" / "model.safetensors.index.json")
    assert len(set(index["weight_map"].values())) >= 3
    for size, reason in (("100", "needs a unit"), ("100 parsecs", "is not a size"), (1.5, "is not a size"),
                         (0, "is not a size")):
        with pytest.raises(ValueError, match=reason):
            roundtrip.convert_to_hf(demo_state_dict_file, tmp_path / "other", verify_logits=False,
                                    max_shard_bytes=size)
    with pytest.raises(ValueError, match="to='onnx' is not a format"):
        roundtrip.convert(demo_state_dict_file, tmp_path / "other", to="onnx")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]


def test_an_empty_open_clip_config_is_refused_not_taken_as_none(tmp_path, demo_state_dict_file):
    """`open_clip_config=""` names a file (an empty path), as `--open-clip-config ""` does: refused, nothing
    written, never read as "no config given"."""
    with pytest.raises(ClipconvError):
        roundtrip.convert(demo_state_dict_file, tmp_path / "out", to="hf", open_clip_config="", verify_logits=False)
    assert not (tmp_path / "out").exists()
