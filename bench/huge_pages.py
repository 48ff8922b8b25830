"""Why the CLI sets NUMPY_MADVISE_HUGEPAGE=0: time to fill fresh numpy arrays with and without huge pages.

Usage: .venv/bin/python bench/huge_pages.py [--rounds 2] [--pause 8]

Each measurement is a fresh process that fills 100 arrays of 16 MB (1.6 GB, the
size of ViT-L/14's float32 weights), with numpy's transparent huge pages on and
off in turn. Before each, the script waits `--pause` seconds: a virtual machine
that hands free memory back to its host (free page reporting) has done so by
then, as it has between two conversions.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ARRAYS, ARRAY_BYTES = 100, 16 * 2**20

FILL = f"""
import os, time, numpy
start, before = time.perf_counter(), os.times()
arrays = [numpy.empty({ARRAY_BYTES}, dtype=numpy.uint8) for _ in range({ARRAYS})]
for array in arrays:
    array.fill(1)
after = os.times()
print(f"{{time.perf_counter() - start:.2f}} s wall, {{after.system - before.system:.2f}} s system")
"""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pause", type=float, default=8.0, help="seconds to wait before each fill")
    arguments = parser.parse_args(argv)
    for _ in range(arguments.rounds):
        for huge_pages in ("1", "0"):
            time.sleep(arguments.pause)
            environment = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": huge_pages}
            result = subprocess.run([sys.executable, "-c", FILL], env=environment, capture_output=True, text=True,
                                    check=True)
            print(f"NUMPY_MADVISE_HUGEPAGE={huge_pages}: {result.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
