"""Time writing or hashing a checkpoint beside the imports of a logit check, as `clipconv to-hf` runs them.

Usage: .venv/bin/python bench/beside_imports.py CHECKPOINT [write|hash|nothing]
       (e.g. ~/.cache/clipconv-bench/ViT-L-14.pt write)

The weights are cast to float32 in memory first, untimed. Then a thread imports
torch, torch._dynamo and transformers' CLIP model (`verify.start_imports`) while
this one writes the HF folder into a temporary folder (with read-back, as when
verifying), hashes the checkpoint, or does nothing. Prints both durations: work
that holds the interpreter slows the imports, which the logit check waits for.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from roundtrip import cli, mapping, readers, verify, writers
from roundtrip.config import Architecture
from roundtrip.dtypes import Cast
from roundtrip.schema import OPENAI_ARCHIVE_ATTRIBUTES


def main(path: str, job: str = "write") -> None:
    cli.tune_process()  # as clipconv runs
    checkpoint = readers.read_openai_checkpoint(Path(path))
    weights = {key: tensor for key, tensor in checkpoint.tensors.items() if key not in OPENAI_ARCHIVE_ATTRIBUTES}
    architecture = Architecture.from_openai_state_dict(weights)
    cast = Cast.from_choice("float32")
    weights = cast.in_memory(weights, after_each=checkpoint.release)

    start = time.perf_counter()
    imports = verify.start_imports()
    imports.add_done_callback(lambda _: print(f"imports {time.perf_counter() - start:5.2f} s", flush=True))
    if job == "write":
        with tempfile.TemporaryDirectory() as folder:
            writers.write_hf_folder(Path(folder), architecture.hf_config(), mapping.to_hf(weights), {}, cast,
                                    writers.DEFAULT_MAX_SHARD_BYTES, lambda done, total: None, read_back=True)
    elif job == "hash":
        readers.sha256_of(Path(path))
    elif job != "nothing":
        raise SystemExit(__doc__.split("\n\n")[1])
    print(f"{job:<7} {time.perf_counter() - start:5.2f} s", flush=True)
    imports.result()


if __name__ == "__main__":
    main(*sys.argv[1:])
