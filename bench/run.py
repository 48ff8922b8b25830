"""`make bench`: wall time and peak memory of clipconv against the module-copying baseline.

Usage: .venv/bin/python bench/run.py [--models B32,L14,H14] [--rounds 3] [--no-biggest] [--no-settings] [--no-sdxl]

For each model, a checkpoint with random weights is created on first use and cached in
${XDG_CACHE_HOME:-~/.cache}/clipconv-bench/: OpenAI's ViT-B/32 and ViT-L/14 as state dicts in OpenAI's
fp16/fp32 mix, open_clip's ViT-H-14 as a hub folder in float32. Then every variant runs once per round as a
fresh subprocess, round-robin, so that noise from other work on the machine spreads over all variants alike:
clipconv in both directions with and without verification, bench/baseline_module_copy.py done the OpenAI or
the open_clip way, and what bounds a conversion from below (`cp` of the weights file; `dd` writing as many
bytes as to-hf writes, with O_DIRECT and fsync as clipconv does; importing the frameworks of the logit check).
Last, open_clip's ViT-bigG-14 (10.2 GB of float32, written by bench/make_biggest.py) is converted without
verification, both ways, and compared with its HF folder without logits, once each, and each process setting
of roundtrip/process.py is applied alone on ViT-L/14 (what each one buys). Then an SDXL-size single file
(bench/make_sdxl.py) goes to diffusers components and back, beside its floors and diffusers' own route
(bench/diffusers_route.py).
Prints medians and ratios to the baseline as markdown tables. Not part of `make test`: nothing here asserts.

Peak RSS is the child's own `ru_maxrss` from `os.wait4` on its pid. Linux carries
the spawning process's peak RSS into a child across exec, so this script never
imports torch (checkpoints are made in a subprocess) and stays at ~15 MB; a
child whose peak is at or below that floor is shown as "<= floor".
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from roundtrip.facts import HF_SAFETENSORS
from roundtrip.output_file import BLOCK_BYTES  # the blocks clipconv writes in

BENCH = Path(__file__).resolve().parent
CLIPCONV = str(Path(sys.executable).parent / "clipconv")
MODELS = {"B32": "ViT-B/32", "L14": "ViT-L/14", "H14": "open_clip:ViT-H-14"}
OPEN_CLIP = "open_clip:"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
BIGGEST = "ViT-bigG-14"  # open_clip's, converted without verification to show memory stays flat
BASELINE = "baseline (module copy)"
MB = 1024  # ru_maxrss is in KiB on Linux; figures are MiB

Command = Callable[[Path], list]  # DEST -> argv


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float  # user + system


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    path = Path(root) / "clipconv-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint(architecture: str) -> Path:
    """The cached random-weight checkpoint of `architecture`, made on first use."""
    is_folder = architecture.startswith(OPEN_CLIP)
    path = cache_dir() / (architecture.replace("/", "-").replace(":", "-") + ("" if is_folder else ".pt"))
    if not path.exists():
        print(f"Creating {path} (first use) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, BENCH / "make_checkpoint.py", architecture, path], check=True)
    return path


def variants(source: Path, hf_folder: Path, open_clip: bool) -> dict[str, Command]:
    """What runs for one model: both directions with and without the logit check, the baseline, and what
    bounds to-hf from below: `cp` of the source's weights (reading), writing to-hf's weights file durably as
    clipconv does (writing), and importing the frameworks its logit check runs (verification)."""
    back = "to-open-clip" if open_clip else "to-openai"
    baseline = [sys.executable, BENCH / "baseline_module_copy.py", *(["--open-clip"] if open_clip else []), source]
    weights = source / OPEN_CLIP_WEIGHTS if open_clip else source
    blocks = -(-(hf_folder / HF_SAFETENSORS).stat().st_size // BLOCK_BYTES)
    source_side = "OPEN_CLIP" if open_clip else "OPENAI"
    imports = (f"import importlib; from roundtrip import references, verify; [importlib.import_module(name) for "
               f"name in verify.frameworks(verify.Side(references.{source_side}), verify.Side(references.HF))]")
    return {
        "clipconv to-hf": lambda dest: [CLIPCONV, "to-hf", source, dest],
        "clipconv to-hf --no-verify": lambda dest: [CLIPCONV, "to-hf", source, dest, "--no-verify"],
        f"clipconv {back}": lambda dest: [CLIPCONV, back, hf_folder, dest],
        f"clipconv {back} --no-verify": lambda dest: [CLIPCONV, back, hf_folder, dest, "--no-verify"],
        BASELINE: lambda dest: [*baseline, dest],
        "cp (copy the weights file)": lambda dest: ["cp", weights, dest],
        f"dd (write {HF_SAFETENSORS}'s size, O_DIRECT + fsync)": lambda dest: [
            "dd", "if=/dev/zero", f"of={dest}", f"bs={BLOCK_BYTES}", f"count={blocks}", "oflag=direct",
            "conv=fsync", "status=none"],
        "import the logit check's frameworks": lambda dest: [sys.executable, "-c", imports],
    }


def rss_floor_mb() -> float:
    """This process's peak RSS: what every child's ru_maxrss starts from (see module docstring)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB


def measure(argv: list, log: Path, **popen_options) -> Measurement:
    """Run `argv` as a child and return its wall time, its own peak RSS and its CPU time."""
    with log.open("w") as output:
        start = time.perf_counter()
        child = subprocess.Popen([str(arg) for arg in argv], stdout=output, stderr=subprocess.STDOUT, **popen_options)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen from waiting again
    if child.returncode:
        sys.exit(f"bench: {' '.join(map(str, argv))} failed with exit code {child.returncode}:\n{log.read_text()}")
    return Measurement(seconds, usage.ru_maxrss / MB, usage.ru_utime + usage.ru_stime)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def benchmark(commands: dict[str, Command], rounds: int, workdir: Path,
              dest_name: str = "dest") -> dict[str, list[Measurement]]:
    """Every command once per round, each round starting one variant later, DEST removed after each run."""
    results: dict[str, list[Measurement]] = {name: [] for name in commands}
    names = list(commands)
    dest, log = workdir / dest_name, workdir / "log.txt"
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            result = measure(commands[name](dest), log)
            remove(dest)
            results[name].append(result)
            print(f"  round {round_number + 1}/{rounds}  {name:<32} {result.seconds:7.1f} s "
                  f"{result.peak_rss_mb:7.0f} MB {result.cpu_seconds:7.1f} CPU s", file=sys.stderr, flush=True)
    return results


def benchmark_model(model: str, rounds: int) -> dict[str, list[Measurement]]:
    source = checkpoint(MODELS[model])
    print(f"{MODELS[model]}: {source} ({source.stat().st_size / 1e6:.0f} MB)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="work-", dir=cache_dir()) as workdir:
        hf_folder = Path(workdir) / "hf"  # to-openai's input, made once and not timed
        subprocess.run([CLIPCONV, "to-hf", source, hf_folder, "--no-verify"], check=True, capture_output=True)
        return benchmark(variants(source, hf_folder, MODELS[model].startswith(OPEN_CLIP)), rounds, Path(workdir))


def biggest() -> list[str]:
    """open_clip's ViT-bigG-14 converted without verification, to HF and back, and compared with its HF folder
    without logits: rows of a table."""
    source = cache_dir() / f"{BIGGEST}-open_clip.pt"
    if not source.exists():
        print(f"Creating {source} (first use, 10.2 GB) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, BENCH / "make_biggest.py", source], check=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="work-", dir=cache_dir()) as workdir:
        hf_folder, back, log = Path(workdir) / "hf", Path(workdir) / "back", Path(workdir) / "log.txt"
        for name, argv in (
            ("to-hf --no-verify", [CLIPCONV, "to-hf", source, hf_folder, "--open-clip-model", BIGGEST, "--no-verify"]),
            ("to-open-clip --no-verify", [CLIPCONV, "to-open-clip", hf_folder, back, "--no-verify"]),
            ("compare --no-logits (the source and its HF folder)",
             [CLIPCONV, "compare", source, hf_folder, "--open-clip-model-a", BIGGEST, "--no-logits"]),
        ):
            result = measure(argv, log)
            rows.append(f"| open_clip {BIGGEST} | clipconv {name} | {result.seconds:.1f} | {result.cpu_seconds:.1f} "
                        f"| {result.peak_rss_mb / 1024:.2f} |")
            print(f"  {BIGGEST} {name}: {result.seconds:.1f} s, {result.peak_rss_mb:.0f} MB", file=sys.stderr,
                  flush=True)
    return rows


def sdxl_variants(base: Path, components: Path) -> dict[str, Command]:
    """What runs on the SDXL-size single file: both diffusion commands with and without the check, their floors
    (writing to-diffusers' weights' bytes durably; copying the base durably) and diffusers' own route."""
    weights = sum((components / name / HF_SAFETENSORS).stat().st_size for name in ("text_encoder", "text_encoder_2"))
    blocks = -(-weights // BLOCK_BYTES)
    return {
        "clipconv to-diffusers": lambda dest: [CLIPCONV, "to-diffusers", base, dest],
        "clipconv to-diffusers --no-verify": lambda dest: [CLIPCONV, "to-diffusers", base, dest, "--no-verify"],
        "clipconv to-single-file --base": lambda dest: [CLIPCONV, "to-single-file", components, dest, "--base", base],
        "clipconv to-single-file --base --no-verify": lambda dest: [CLIPCONV, "to-single-file", components, dest,
                                                                    "--base", base, "--no-verify"],
        SDXL_WRITE_FLOOR: lambda dest: ["dd", "if=/dev/zero", f"of={dest}", f"bs={BLOCK_BYTES}", f"count={blocks}",
                                        "oflag=direct", "conv=fsync", "status=none"],
        SDXL_COPY_FLOOR: lambda dest: ["dd", f"if={base}", f"of={dest}", f"bs={BLOCK_BYTES}", "oflag=direct",
                                       "conv=fsync", "status=none"],
        SDXL_DIFFUSERS: lambda dest: [sys.executable, BENCH / "diffusers_route.py", base, components, dest],
    }


SDXL_FILE = "sd_xl_base-random.safetensors"
SDXL_WRITE_FLOOR = "dd (write to-diffusers' weights' size, O_DIRECT + fsync)"
SDXL_COPY_FLOOR = "dd (copy the base file, O_DIRECT + fsync)"
SDXL_DIFFUSERS = "diffusers' route (load the file, its converters, save_pretrained)"
# variant -> what it is measured against (the ratios item 6 of the diffusion issue sets)
SDXL_AGAINST = {
    "clipconv to-diffusers": SDXL_DIFFUSERS, "clipconv to-diffusers --no-verify": SDXL_WRITE_FLOOR,
    "clipconv to-single-file --base": SDXL_COPY_FLOOR, "clipconv to-single-file --base --no-verify": SDXL_COPY_FLOOR,
}


def sdxl(rounds: int) -> list[str]:
    """Rows for the SDXL-size single file (6.9 GB, bench/make_sdxl.py): medians, and each clipconv variant's
    time against its floor and against diffusers' route."""
    base = cache_dir() / SDXL_FILE
    if not base.exists():
        print(f"Creating {base} (first use, 6.9 GB) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, BENCH / "make_sdxl.py", base], check=True)
    print(f"SDXL: {base} ({base.stat().st_size / 1e9:.2f} GB)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="work-", dir=cache_dir()) as workdir:
        components = Path(workdir) / "components"  # to-single-file's input, made once and not timed
        subprocess.run([CLIPCONV, "to-diffusers", base, components, "--no-verify"], check=True, capture_output=True)
        results = benchmark(sdxl_variants(base, components), rounds, Path(workdir), "dest.safetensors")
    seconds = {name: statistics.median(m.seconds for m in runs) for name, runs in results.items()}
    rows = []
    for name, runs in results.items():
        against = SDXL_AGAINST.get(name)
        ratio = f"{seconds[name] / seconds[against]:.2f}x of {against.split(' (')[0]}" if against else ""
        # diffusers' route goes one way: from the single file to components
        faster = f"{seconds[SDXL_DIFFUSERS] / seconds[name]:.1f}x" if name.startswith("clipconv to-diffusers") else ""
        rows.append(f"| {name} | {seconds[name]:.1f} | {statistics.median(m.cpu_seconds for m in runs):.1f} | "
                    f"{statistics.median(m.peak_rss_mb for m in runs) / 1024:.2f} | {ratio} | {faster} |")
    return rows


def at_most_if_floor(text: str, mb: float, floor: float) -> str:
    """A peak at the floor is only an upper bound: the child may have used less."""
    return f"<= {text}" if mb <= floor else text


def table(model: str, results: dict[str, list[Measurement]], floor: float) -> list[str]:
    seconds = {name: statistics.median(m.seconds for m in runs) for name, runs in results.items()}
    rss = {name: statistics.median(m.peak_rss_mb for m in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(m.cpu_seconds for m in runs) for name, runs in results.items()}
    rows = []
    for name in results:
        share = rss[name] / rss[BASELINE]
        rss_text = at_most_if_floor(f"{rss[name]:.0f}", rss[name], floor)
        share_text = at_most_if_floor(f"{share:.0%}" if share >= 0.1 else f"{share:.1%}", rss[name], floor)
        label = MODELS[model].replace(OPEN_CLIP, "open_clip ")
        rows.append(f"| {label} | {name} | {seconds[name]:.1f} | {cpu[name]:.1f} | {rss_text} | "
                    f"{seconds[BASELINE] / seconds[name]:.2f}x | {share_text} |")
    return rows


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores, {ram_gb:.0f} GB RAM, {cpu}; Python {platform.python_version()}, "
            f"torch {metadata.version('torch')}, transformers {metadata.version('transformers')}")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)} (default: all; '' for none)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, alternating (default: 3)")
    parser.add_argument("--no-biggest", action="store_true", help=f"leave out open_clip's {BIGGEST} (10.2 GB)")
    parser.add_argument("--no-settings", action="store_true", help="leave out the process settings' comparison")
    parser.add_argument("--no-sdxl", action="store_true", help="leave out the SDXL-size single file (6.9 GB)")
    arguments = parser.parse_args(argv)
    arguments.models = [model for model in arguments.models.split(",") if model]  # "": none of them
    unknown = [model for model in arguments.models if model not in MODELS]
    if unknown or arguments.rounds < 1:
        parser.error(f"unknown model(s) {unknown}" if unknown else "--rounds must be at least 1")
    return arguments


# The process settings of roundtrip/process.py (and the exit that `clipconv`, cli.run, ends with), each alone and
# all together, against none: what each buys on a whole verified L/14 conversion (settings whose gain is under 5%
# are not kept; docs/performance.md).
_CLI = "import sys; import roundtrip.cli as cli, roundtrip.process as process; sys.argv[0] = 'clipconv'; "
SETTING_NAMES = ("passive_openmp_workers", "no_transparent_huge_pages", "rare_garbage_collection", "keep_freed_memory")
SETTING_VARIANTS = {
    "no settings": _CLI + "process.SETTINGS = (); cli.main()",
    **{f"only {name}": _CLI + f"process.SETTINGS = tuple(s for s in process.SETTINGS if s.__name__ == '{name}'); "
       "process.tune(); cli.main()" for name in SETTING_NAMES},
    "only exit_without_teardown": _CLI + "process.SETTINGS = (); cli.run()",  # cli.run ends with it
    "all settings": _CLI + "cli.run()",
}


def process_settings(rounds: int) -> list[str]:
    """Rows of what each process setting buys: to-hf of ViT-L/14 with verification, every variant alternating."""
    source = checkpoint(MODELS["L14"])
    commands = {name: (lambda dest, code=code: [sys.executable, "-c", code, "to-hf", source, dest])
                for name, code in SETTING_VARIANTS.items()}
    with tempfile.TemporaryDirectory(prefix="work-", dir=cache_dir()) as workdir:
        results = benchmark(commands, rounds, Path(workdir))
    base = statistics.median(m.seconds for m in results["no settings"])
    rows = []
    for name, runs in results.items():
        seconds = statistics.median(m.seconds for m in runs)
        rows.append(f"| {name} | {seconds:.1f} | {statistics.median(m.cpu_seconds for m in runs):.1f} | "
                    f"{(1 - seconds / base) * 100:.0f}% |")
    return rows


def main(argv: list[str]) -> None:
    arguments = parse_arguments(argv)
    results = {model: benchmark_model(model, arguments.rounds) for model in arguments.models}
    biggest_rows = [] if arguments.no_biggest else biggest()
    setting_rows = [] if arguments.no_settings else process_settings(arguments.rounds)
    sdxl_rows = [] if arguments.no_sdxl else sdxl(arguments.rounds)
    floor = rss_floor_mb()
    options = (" --no-biggest" if arguments.no_biggest else "") + (" --no-settings" if arguments.no_settings else "") \
        + (" --no-sdxl" if arguments.no_sdxl else "")
    print(f"\nCommand: bench/run.py --models {','.join(arguments.models)} --rounds {arguments.rounds}{options}")
    print(f"Machine: {machine()}")
    print(f"Medians of {arguments.rounds} alternating runs; speed-up = baseline time / variant time (from the"
          f" unrounded medians); CPU = user + system; RSS share = variant peak RSS / baseline peak RSS.\n")
    if results:
        print("| checkpoint | variant | median wall s | median CPU s | median peak RSS MB | speed-up vs baseline "
              "| RSS share of baseline |")
        print("|---|---|---|---|---|---|---|")
    for model, model_results in results.items():
        print("\n".join(table(model, model_results, floor)))
    if biggest_rows:
        print("\nWithout verification, once each (the HF folder of the first is the source of the others):\n")
        print("| checkpoint | variant | wall s | CPU s | peak RSS GB |")
        print("|---|---|---|---|---|")
        print("\n".join(biggest_rows))
    if setting_rows:
        print(f"\nProcess settings, ViT-L/14 to-hf with verification, medians of {arguments.rounds} alternating runs "
              "(the share of the whole conversion's time each saves, against none):\n")
        print("| variant | median wall s | median CPU s | time saved vs no settings |")
        print("|---|---|---|---|")
        print("\n".join(setting_rows))
    if sdxl_rows:
        print(f"\nStable Diffusion XL base's size (6.9 GB single file, float16; real encoder shapes, stand-in UNet and "
              f"VAE), medians of {arguments.rounds} alternating runs:\n")
        print("| variant | median wall s | median CPU s | median peak RSS GB | time against | faster than "
              "diffusers' route |")
        print("|---|---|---|---|---|---|")
        print("\n".join(sdxl_rows))


if __name__ == "__main__":
    main(sys.argv[1:])
