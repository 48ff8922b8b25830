"""DEST holds one conversion's complete output or what it held before, whatever runs beside it and however the
run ends: a DEST that appears or changes meanwhile is never replaced, `--overwrite` replaces only what clipconv
wrote, and a stopped run (Ctrl-C, SIGTERM, SIGHUP) leaves nothing behind."""

from __future__ import annotations

import errno
import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import roundtrip
from roundtrip import destination
from roundtrip.errors import OutputError
from roundtrip.examples import DEMO, random_openai_state_dict

from conftest import assert_refused, hf_clip_config, random_hf_model, run_cli

CLIPCONV = Path(sys.executable).parent / "clipconv"


def contents(path: Path) -> dict[str, str]:
    """Every file under `path` (or `path` itself) by its SHA-256."""
    files = sorted(file for file in path.rglob("*") if file.is_file()) if path.is_dir() else [path]
    return {str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest() for file in files}


def _without_renameat2(monkeypatch) -> None:
    """As on a system without renameat2 (another OS, an old kernel): clipconv falls back to its own moves."""
    monkeypatch.setattr(destination, "_renameat2", lambda *arguments: errno.ENOSYS)


@pytest.fixture(scope="module")
def second_source(tmp_path_factory) -> Path:
    """Another model than the demo's, to tell two conversions' outputs apart."""
    path = tmp_path_factory.mktemp("other") / "other.pt"
    torch.save(random_openai_state_dict(DEMO, seed=9), path)
    return path


# ---- another conversion to the same DEST ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_sources(tmp_path_factory, demo_state_dict_file, second_source) -> tuple[Path, Path]:
    """Both models as HF folders, sources of a file DEST."""
    folder = tmp_path_factory.mktemp("hf-sources")
    for source, name in ((demo_state_dict_file, "first"), (second_source, "second")):
        roundtrip.convert(source, folder / name, to="hf", verify_logits=False)
    return folder / "first", folder / "second"


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "without renameat2"])
@pytest.mark.parametrize("to, dest_name", [("hf", "same"), ("openai", "same.pt")])
def test_a_dest_that_appears_meanwhile_is_left_as_it_is_and_this_output_removed(tmp_path, demo_state_dict_file,
                                                                                second_source, hf_sources, to,
                                                                                dest_name, renameat2, monkeypatch):
    """Without renameat2 (another OS, an old kernel), a file is linked into place and a folder renamed after a
    last look: either refuses a DEST that is there."""
    if not renameat2:
        _without_renameat2(monkeypatch)
    dest = tmp_path / dest_name
    first, second = (demo_state_dict_file, second_source) if to == "hf" else hf_sources

    def another_conversion_finishes_first(message: str) -> None:
        if message.startswith("Writing"):
            roundtrip.convert(second, dest, to=to, verify_logits=False)

    with pytest.raises(OutputError, match=f"^{dest}: appeared or changed while this conversion ran"):
        roundtrip.convert(first, dest, to=to, verify_logits=False, report=another_conversion_finishes_first)
    roundtrip.convert(second, tmp_path / f"expected-{dest_name}", to=to, verify_logits=False)
    assert contents(dest) == contents(tmp_path / f"expected-{dest_name}")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([dest_name, f"expected-{dest_name}"])


def test_overwrite_replaces_only_the_dest_it_approved(tmp_path, demo_state_dict_file, second_source):
    dest = tmp_path / "hf"
    roundtrip.convert(demo_state_dict_file, dest, to="hf", verify_logits=False)

    def another_conversion_replaces_it(message: str) -> None:
        if message.startswith("Writing"):
            roundtrip.convert(second_source, dest, to="hf", verify_logits=False, overwrite=True)

    with pytest.raises(OutputError, match="appeared or changed while this conversion ran"):
        roundtrip.convert(demo_state_dict_file, dest, to="hf", verify_logits=False, overwrite=True,
                          report=another_conversion_replaces_it)
    roundtrip.convert(second_source, tmp_path / "expected", to="hf", verify_logits=False)
    assert contents(dest) == contents(tmp_path / "expected")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["expected", "hf"]


@pytest.mark.parametrize("to, dest_name", [("hf", "hf"), ("openai", "model.pt")])
def test_overwrite_of_a_dest_removed_meanwhile_writes_the_output_there(tmp_path, demo_state_dict_file,
                                                                       second_source, hf_sources, to, dest_name):
    dest = tmp_path / dest_name
    source, other = (demo_state_dict_file, second_source) if to == "hf" else hf_sources
    roundtrip.convert(other, dest, to=to, verify_logits=False)

    def the_user_removes_it(message: str) -> None:
        if not message.startswith("Writing"):
            return
        if dest.is_dir():
            shutil.rmtree(dest)
        else:
            dest.unlink()

    roundtrip.convert(source, dest, to=to, verify_logits=False, overwrite=True, report=the_user_removes_it)
    roundtrip.convert(source, tmp_path / f"expected-{dest_name}", to=to, verify_logits=False)
    assert contents(dest) == contents(tmp_path / f"expected-{dest_name}")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([dest_name, f"expected-{dest_name}"])


def test_two_conversions_started_together_to_one_dest_one_wins_and_the_other_says_so(tmp_path, demo_state_dict_file,
                                                                                     second_source):
    dest = tmp_path / "same"
    runs = {source: subprocess.Popen([CLIPCONV, "to-hf", source, dest, "--no-verify"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            for source in (demo_state_dict_file, second_source)}
    finished = {source: (run.wait(timeout=300), *run.communicate()) for source, run in runs.items()}
    winners = [source for source, (code, _, _) in finished.items() if code == 0]
    assert len(winners) == 1, finished
    (loser,) = set(finished) - set(winners)
    code, _, errors = finished[loser]
    assert code == 1 and errors.splitlines()[-1].startswith(f"clipconv: error: {dest}: "), errors
    assert "already exists" in errors or "appeared or changed while this conversion ran" in errors
    roundtrip.convert(winners[0], tmp_path / "expected", to="hf", verify_logits=False)
    card = "README.md"  # names its source: the rest of both folders is the same for the same weights
    assert {name: digest for name, digest in contents(dest).items() if name != card} == \
        {name: digest for name, digest in contents(tmp_path / "expected").items() if name != card}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["expected", "same"]


# ---- --overwrite replaces only what clipconv wrote -----------------------------------------------------------


def test_overwrite_refuses_a_file_clipconv_did_not_write_and_replaces_one_it_did(tmp_path, demo_state_dict_file):
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    torch.save({"visual.proj": torch.zeros(2)}, tmp_path / "victim.pt")  # a user's own file
    before = contents(tmp_path / "victim.pt")
    assert_refused(run_cli("to-openai", tmp_path / "hf", tmp_path / "victim.pt", "--overwrite"), "victim.pt",
                   "was not written by clipconv (the file carries no clipconv record)")
    assert contents(tmp_path / "victim.pt") == before
    for name in ("mine.pt", "mine.safetensors"):
        assert run_cli("to-openai", tmp_path / "hf", tmp_path / name, "--no-verify").exit_code == 0
        result = run_cli("to-openai", tmp_path / "hf", tmp_path / name, "--overwrite", "--no-verify")
        assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf", "mine.pt", "mine.safetensors", "victim.pt"]


@pytest.mark.parametrize("command", ["to-hf", "to-open-clip"])
def test_overwrite_refuses_a_model_folder_clipconv_did_not_write(tmp_path, demo_state_dict_file, command):
    random_hf_model(hf_clip_config(), fp16_representable=False).save_pretrained(tmp_path / "from-the-hub")
    before = contents(tmp_path / "from-the-hub")
    result = run_cli(command, demo_state_dict_file, tmp_path / "from-the-hub", "--overwrite")
    assert_refused(result, "from-the-hub")
    assert {"to-hf": "was not written by clipconv (the folder carries no clipconv record)",
            "to-open-clip": "holds config.json, which is not part of a clipconv model folder"}[command] in result.stderr
    assert contents(tmp_path / "from-the-hub") == before


def test_overwrite_names_another_commands_output_as_such(tmp_path, demo_state_dict_file):
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    before = contents(tmp_path / "hf")
    assert_refused(run_cli("to-open-clip", demo_state_dict_file, tmp_path / "hf", "--overwrite"),
                   "is another clipconv command's output (Hugging Face CLIPModel folder)",
                   "replaces only this command's (open_clip model folder)")
    assert contents(tmp_path / "hf") == before


def test_overwrite_keeps_a_folder_of_its_output_that_holds_another_models_files(tmp_path, demo_state_dict_file):
    """A hub repository holding both formats: to-open-clip wrote its open_clip files, the HF ones are the user's."""
    assert run_cli("to-open-clip", demo_state_dict_file, tmp_path / "repo", "--no-verify").exit_code == 0
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "repo" / name).write_bytes((tmp_path / "hf" / name).read_bytes())
    before = contents(tmp_path / "repo")
    assert_refused(run_cli("to-open-clip", demo_state_dict_file, tmp_path / "repo", "--overwrite"),
                   "holds config.json, which is not part of a clipconv model folder (2 such entries in all)")
    assert contents(tmp_path / "repo") == before


def test_overwrite_replaces_a_folder_of_components_it_wrote_and_keeps_one_holding_the_users_files(tmp_path):
    """A folder of diffusers components holds folders: those to-diffusers writes (a component, a tokenizer, with
    only its files) are replaced; a user's unet/ or a note in a component's folder makes it the user's."""
    from roundtrip.testing import write_single_file

    source = write_single_file(tmp_path / "sdxl.safetensors", "Stable Diffusion XL", layers=1, vocab_size=1000)
    assert run_cli("to-diffusers", source, tmp_path / "enc", "--no-verify").exit_code == 0
    result = run_cli("to-diffusers", source, tmp_path / "enc", "--overwrite", "--no-verify")
    assert result.exit_code == 0, result.output
    for entry, says in (("unet/config.json", "holds unet, which is not part of a clipconv model folder"),
                        ("text_encoder_2/notes.txt", "holds text_encoder_2, which is not part of a clipconv model")):
        (tmp_path / "enc" / entry).parent.mkdir(exist_ok=True)
        (tmp_path / "enc" / entry).write_text("mine")
        before = contents(tmp_path / "enc")
        assert_refused(run_cli("to-diffusers", source, tmp_path / "enc", "--overwrite", "--no-verify"), says)
        assert contents(tmp_path / "enc") == before
        (tmp_path / "enc" / entry).unlink()
        if entry.startswith("unet/"):
            (tmp_path / "enc" / "unet").rmdir()
    assert run_cli("to-diffusers", source, tmp_path / "enc", "--overwrite", "--no-verify").exit_code == 0


def test_a_foreign_entry_is_counted_in_words_that_fit_the_count(tmp_path, demo_state_dict_file):
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--overwrite")
    assert_refused(result, "holds notes.txt, which is not part of a clipconv model folder:")
    assert "such entr" not in result.stderr
    (tmp_path / "hf" / "todo.txt").write_text("mine")
    assert_refused(run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--overwrite"), "(2 such entries in all)")


# ---- stopped by a signal -------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_folder", [True, False], ids=["folder", "file"])
def test_a_stop_while_the_staging_is_made_leaves_nothing(tmp_path, demo_state_dict_file, hf_sources, monkeypatch,
                                                        is_folder):
    """Kills the staging left behind when a signal lands after the temporary exists but before its name is known
    (the cleanup then has no name to remove and must look beside DEST)."""
    make = "mkdtemp" if is_folder else "mkstemp"
    real_make = getattr(destination.tempfile, make)

    made = []

    def made_then_stopped(*arguments, **keywords):
        made.append(real_make(*arguments, **keywords))
        raise KeyboardInterrupt

    monkeypatch.setattr(destination.tempfile, make, made_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        roundtrip.convert(demo_state_dict_file if is_folder else hf_sources[0],
                          tmp_path / ("hf" if is_folder else "model.pt"),
                          to="hf" if is_folder else "openai", verify_logits=False)
    assert list(tmp_path.iterdir()) == []
    staged = Path(made[0] if is_folder else made[0][1])
    assert staged.parent == tmp_path  # beside DEST, on its file system: the move into place is one rename


def staging_of(dest: Path) -> list[Path]:
    return list(dest.parent.glob(f".{dest.name}.clipconv-new-*"))


@pytest.mark.parametrize("stop, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
@pytest.mark.parametrize("replacing", [False, True], ids=["new DEST", "--overwrite"])
def test_a_signal_leaves_nothing_behind_and_the_old_dest_as_it_was(tmp_path, demo_state_dict_file, stop, code,
                                                                   replacing):
    dest = tmp_path / "hf"
    if replacing:
        assert run_cli("to-hf", demo_state_dict_file, dest, "--no-verify").exit_code == 0
    before = contents(dest) if replacing else None
    # Verified: the staged folder waits there while the logit check imports torch and transformers (seconds).
    run = subprocess.Popen([CLIPCONV, "to-hf", demo_state_dict_file, dest, *(["--overwrite"] if replacing else [])],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not staging_of(dest) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert staging_of(dest), "the conversion never staged its output"
    run.send_signal(stop)
    _, errors = run.communicate(timeout=120)
    assert run.returncode == code, errors
    assert errors.splitlines()[-1] == f"clipconv: error: stopped by {stop.name}; anything unfinished was removed"
    assert staging_of(dest) == []
    assert (contents(dest) if replacing else dest.exists()) == (before if replacing else False)
    assert sorted(path.name for path in tmp_path.iterdir()) == (["hf"] if replacing else [])


# ---- where renameat2 is missing or fails ----------------------------------------------------------------------


@pytest.mark.parametrize("to, dest_name", [("hf", "hf"), ("openai", "model.pt")])
def test_overwrite_without_renameat2_still_replaces_the_approved_dest(tmp_path, demo_state_dict_file,
                                                                      second_source, hf_sources, to, dest_name,
                                                                      monkeypatch):
    """Where the system has no renameat2 (another OS, an old kernel): a file is replaced in one os.replace, a
    folder by moving the old DEST aside, then the new one in, then removing the old."""
    first, second = (demo_state_dict_file, second_source) if to == "hf" else hf_sources
    dest = tmp_path / dest_name
    roundtrip.convert(first, dest, to=to, verify_logits=False)
    _without_renameat2(monkeypatch)
    roundtrip.convert(second, dest, to=to, verify_logits=False, overwrite=True)
    roundtrip.convert(second, tmp_path / "expected", to=to, verify_logits=False)
    assert contents(dest) == contents(tmp_path / "expected")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([dest_name, "expected"])
    roundtrip.convert(first, tmp_path / "new", to=to, verify_logits=False)  # and into a DEST that is not there
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([dest_name, "expected", "new"])


def _recording_replaces(monkeypatch, dest: Path, stop_at_the_move_in: bool = False) -> list[tuple[str, str]]:
    """The os.replace calls that move something out of or into `dest`, as (source, destination) names; with
    `stop_at_the_move_in`, the run is stopped (as by a kill) where the new DEST would be moved in."""
    moves, real_replace = [], destination.os.replace

    def replace(source, target):
        if Path(target) == dest and stop_at_the_move_in:
            raise KeyboardInterrupt
        if dest in (Path(source), Path(target)):
            moves.append((Path(source).name, Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(destination.os, "replace", replace)
    return moves


@pytest.mark.parametrize("to, dest_name", [("hf", "clip-vit"), ("openai", "clip-vit.pt")])
def test_without_renameat2_a_file_is_replaced_in_one_move_and_a_folder_by_moving_the_old_aside(
        tmp_path, demo_state_dict_file, hf_sources, second_source, monkeypatch, to, dest_name):
    """Kills a file DEST moved aside like a folder (DEST missing for a moment where one os.replace does it)."""
    first, second = (demo_state_dict_file, second_source) if to == "hf" else hf_sources
    dest = tmp_path / dest_name
    roundtrip.convert(first, dest, to=to, verify_logits=False)
    _without_renameat2(monkeypatch)
    moves = _recording_replaces(monkeypatch, dest)
    roundtrip.convert(second, dest, to=to, verify_logits=False, overwrite=True)
    staging, aside = f".{dest_name}.clipconv-new-", f".{dest_name}.clipconv-old-"
    if to == "openai":
        assert len(moves) == 1 and moves[0][0].startswith(staging) and moves[0][1] == dest_name, moves
    else:
        assert [(source.startswith((staging, aside)), target) for source, target in moves] == \
            [(False, moves[0][1]), (True, dest_name)] and moves[0][1].startswith(aside), moves


def test_a_dest_moved_aside_by_a_run_killed_before_the_new_one_arrived_is_given_back(
        tmp_path, demo_state_dict_file, second_source, monkeypatch):
    """Kills a name for the old DEST that the next run does not recognise when DEST's own name has dashes: the
    user's model would stay hidden beside an empty DEST."""
    dest = tmp_path / "clip-vit-b-32"
    roundtrip.convert(demo_state_dict_file, dest, to="hf", verify_logits=False)
    before = contents(dest)
    _without_renameat2(monkeypatch)
    _recording_replaces(monkeypatch, dest, stop_at_the_move_in=True)
    with pytest.raises(KeyboardInterrupt):
        roundtrip.convert(second_source, dest, to="hf", verify_logits=False, overwrite=True)
    assert not dest.exists() and [path.name.startswith(".clip-vit-b-32.clipconv-old-") for path in
                                  tmp_path.iterdir()] == [True]
    monkeypatch.undo()
    destination.clean_leftovers(dest)  # what the next conversion to DEST does first
    assert contents(dest) == before and [path.name for path in tmp_path.iterdir()] == ["clip-vit-b-32"]


def test_without_renameat2_a_dest_that_changed_meanwhile_is_left_as_it_is(tmp_path, demo_state_dict_file,
                                                                          second_source, monkeypatch):
    dest = tmp_path / "hf"
    roundtrip.convert(demo_state_dict_file, dest, to="hf", verify_logits=False)
    _without_renameat2(monkeypatch)

    def another_conversion_replaces_it(message: str) -> None:
        if message.startswith("Writing"):
            roundtrip.convert(second_source, dest, to="hf", verify_logits=False, overwrite=True)

    with pytest.raises(OutputError, match=f"{dest}: appeared or changed while this conversion ran"):
        roundtrip.convert(demo_state_dict_file, dest, to="hf", verify_logits=False, overwrite=True,
                          report=another_conversion_replaces_it)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize("replacing", [False, True], ids=["new DEST", "--overwrite"])
def test_a_rename_the_system_refuses_is_one_line_and_leaves_dest_as_it_was(tmp_path, demo_state_dict_file,
                                                                          monkeypatch, replacing):
    dest = tmp_path / "hf"
    if replacing:
        roundtrip.convert(demo_state_dict_file, dest, to="hf", verify_logits=False)
    before = contents(dest) if replacing else None
    monkeypatch.setattr(destination, "_renameat2", lambda *arguments: errno.EACCES)
    with pytest.raises(OutputError, match=f"^{dest}: could not be written: Permission denied$"):
        roundtrip.convert(demo_state_dict_file, dest, to="hf", verify_logits=False, overwrite=replacing)
    assert (contents(dest) if replacing else dest.exists()) == (before if replacing else False)
    assert sorted(path.name for path in tmp_path.iterdir()) == (["hf"] if replacing else [])


def test_the_working_folder_named_through_a_symbolic_link_is_refused_as_the_working_folder(
        tmp_path, demo_state_dict_file, monkeypatch):
    """DEST's parent is resolved before it is compared: alias/work is the working folder when alias links to it."""
    (tmp_path / "real" / "work").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path / "real" / "work")
    dest = tmp_path / "alias" / "work"
    assert_refused(run_cli("to-hf", demo_state_dict_file, dest, "--overwrite", "--no-verify"),
                   f"{dest}: is the working folder or holds it")
    assert [path.name for path in (tmp_path / "real" / "work").iterdir()] == []


def test_removing_what_another_cleanup_removed_first_is_not_an_error(tmp_path):
    """Two runs may clean the same leftovers beside DEST: the second finds them gone."""
    destination._remove(tmp_path / ".hf.clipconv-new-1-gone")


def test_a_process_of_another_user_counts_as_running(monkeypatch):
    """Its staging beside DEST is not ours to remove: os.kill(pid, 0) answers PermissionError for it."""
    def kill(pid, signal_number):
        assert signal_number == 0
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(destination.os, "kill", kill)
    assert destination._is_running(destination.os.getpid() + 1)
