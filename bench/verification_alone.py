"""Time the logit check alone on a checkpoint, stage by stage, without writing anything.

Usage: .venv/bin/python bench/verification_alone.py CHECKPOINT   (e.g. ~/.cache/clipconv-bench/ViT-L-14.pt)

What `clipconv to-hf` verifies, in the same order, with the wall time at which each
stage starts and ends, counted from the start of this script (imports included).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

START = time.perf_counter()

from roundtrip import cli, readers, verify  # noqa: E402 - timed from before the imports
from roundtrip.config import Architecture  # noqa: E402
from roundtrip.dtypes import Cast  # noqa: E402
from roundtrip.schema import OPENAI_ARCHIVE_ATTRIBUTES  # noqa: E402

STAGES = ("probe_images", "probe_tokens", "openai_logits", "hf_model", "hf_logits")


def timed(name: str, stage):
    def run(*args, **kwargs):
        began = time.perf_counter() - START
        result = stage(*args, **kwargs)
        print(f"{name:<14} {began:6.2f} -> {time.perf_counter() - START:6.2f} s", flush=True)
        return result
    return run


def main(path: str) -> None:
    cli.tune_process()  # as clipconv runs
    checkpoint = readers.read_openai_checkpoint(Path(path))
    weights = {key: tensor for key, tensor in checkpoint.tensors.items() if key not in OPENAI_ARCHIVE_ATTRIBUTES}
    architecture = Architecture.from_openai_state_dict(weights)
    for name in STAGES:
        setattr(verify, name, timed(name, getattr(verify, name)))
    verify.start_imports()  # as convert does: the imports run while the weights are cast once
    weights = Cast.from_choice("float32").in_memory(weights, after_each=checkpoint.release)
    difference = verify.max_logit_difference(weights, architecture.hf_config(), architecture)
    print(f"total          {time.perf_counter() - START:6.2f} s; max |logit difference| {difference:.2e}")


if __name__ == "__main__":
    main(*sys.argv[1:])
