"""Time one clipconv command from two checkouts (or two environments), alternating, and print medians.

Usage: .venv/bin/python bench/compare_checkouts.py PAIRS SIDE SIDE -- COMMAND SOURCE DEST [OPTIONS]
  SIDE is NAME=CHECKOUT or NAME=CHECKOUT:VAR=VALUE,... (environment variables for that side)
  e.g. git worktree add /tmp/before HEAD~1, then
       .venv/bin/python bench/compare_checkouts.py 8 before=/tmp/before after=. -- \\
           to-hf ~/.cache/clipconv-bench/ViT-L-14.pt OUT
  DEST is deleted before every run; SOURCE and DEST may be relative to where this is started.

Each run is a fresh `python -c` started in an empty folder: `python -c` and `python -m`
put the working directory first on sys.path, so run from a checkout they import that
checkout whatever PYTHONPATH says. Every run checks which `roundtrip` it imported.
Prints each run's wall time, CPU time (user + system) and peak RSS, then the medians.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from run import Measurement, measure  # bench/run.py: this folder is first on sys.path

PAUSE_SECONDS = 3  # between runs, so that one run's writes are not the next one's


@dataclass(frozen=True)
class Side:
    name: str
    checkout: Path
    environment: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Side:
        name, _, rest = text.partition("=")
        checkout, _, variables = rest.partition(":")
        environment = dict(pair.split("=", 1) for pair in variables.split(",") if pair)
        return cls(name, Path(checkout).resolve(), environment)


def run_once(side: Side, arguments: list[str], output: Path, folder: Path) -> Measurement:
    """One clipconv run from `side`'s checkout, started in `folder` (empty)."""
    shutil.rmtree(output, ignore_errors=True)
    code = (
        "import sys, roundtrip\n"
        f"assert roundtrip.__file__.startswith({str(side.checkout) + '/'!r}), roundtrip.__file__\n"
        "from roundtrip.cli import run\n"
        "sys.argv[0] = 'clipconv'\n"
        "run()\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(side.checkout), **side.environment}
    return measure([sys.executable, "-c", code, *arguments], folder / "log.txt", cwd=folder, env=environment)


def main(argv: list[str]) -> None:
    if "--" not in argv or len(argv) < 4:
        raise SystemExit(__doc__)
    split = argv.index("--")
    pairs, sides, arguments = int(argv[0]), [Side.parse(text) for text in argv[1:split]], argv[split + 1 :]
    if len(arguments) < 3:
        raise SystemExit(__doc__)
    # Runs start in an empty folder: SOURCE and DEST, relative to here, must still name the same files.
    command, source, output, *options = arguments
    output = Path(output).resolve()
    arguments = [command, str(Path(source).resolve()), str(output), *options]
    results: dict[str, list[Measurement]] = {side.name: [] for side in sides}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(pairs):
            for side in sides:
                run = run_once(side, arguments, output, Path(folder))
                results[side.name].append(run)
                print(f"{side.name:<12} {run.seconds:6.2f} s  CPU {run.cpu_seconds:6.2f} s  "
                      f"peak RSS {run.peak_rss_mb:6.0f} MB", flush=True)
                time.sleep(PAUSE_SECONDS)
    shutil.rmtree(output, ignore_errors=True)
    for name, runs in results.items():
        walls = sorted(round(run.seconds, 2) for run in runs)
        cpu = statistics.median(run.cpu_seconds for run in runs)
        print(f"{name:<12} median {statistics.median(walls):.2f} s, CPU {cpu:.2f} s; all: {walls}")


if __name__ == "__main__":
    main(sys.argv[1:])
