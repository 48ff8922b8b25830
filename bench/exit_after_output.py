"""Time from a conversion's last line of output to its process's exit, with and without `cli.run`'s quick exit.

Usage: .venv/bin/python bench/exit_after_output.py CHECKPOINT [PAIRS]
       (e.g. ~/.cache/clipconv-bench/ViT-L-14.pt 4)

Alternates `clipconv to-hf` entered through `cli.main` (the interpreter tears
itself down: modules, destructors) and through `cli.run` (the installed command:
`os._exit(0)` after success). The whole run's wall time varies by more than
this difference on a shared machine; the time after the summary does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def seconds_after_last_output(entry: str, checkpoint: str, dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    code = f"import sys; from roundtrip.cli import {entry}; sys.argv[0] = 'clipconv'; {entry}()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "to-hf", checkpoint, str(dest)],
        cwd=dest.parent, env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    last_output = time.perf_counter()
    for _ in process.stdout:
        last_output = time.perf_counter()
    if process.wait() != 0:
        raise SystemExit(f"clipconv to-hf {checkpoint} failed")
    return time.perf_counter() - last_output


def main(checkpoint: str, pairs: str = "4") -> None:
    with tempfile.TemporaryDirectory() as work:
        for _ in range(int(pairs)):
            for entry in ("main", "run"):
                seconds = seconds_after_last_output(entry, checkpoint, Path(work) / "hf")
                print(f"cli.{entry:<4} last output -> exit {seconds:.3f} s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
