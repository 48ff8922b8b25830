"""Sources named by their Hugging Face Hub repository, as the user's other tools name them: `ORG/NAME`,
`ORG/NAME@REVISION`, open_clip's `hf-hub:ORG/NAME`, and a folder inside one as `ORG/NAME/SUBFOLDER`.

A name is looked up in the local cache (where `from_pretrained` and open_clip put models: `HF_HUB_CACHE`, else
`HF_HOME`/hub, else ~/.cache/huggingface/hub), with huggingface_hub's own layout and code; unless offline
(`--offline`, or `HF_HUB_OFFLINE=1`), what the cache lacks is downloaded: only the files clipconv reads. An
existing path always wins over a name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from roundtrip.errors import InputError
from roundtrip.facts import (
    HF_CONFIG,
    HF_PICKLE,
    HF_PICKLE_INDEX,
    HF_SAFETENSORS,
    HF_SAFETENSORS_INDEX,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_PICKLE,
    OPEN_CLIP_SAFETENSORS,
    PREPROCESSOR_CONFIG,
    TOKENIZER_FILES,
)

OPEN_CLIP_PREFIX = "hf-hub:"  # open_clip.create_model("hf-hub:ORG/NAME")
# ORG/NAME, then any subfolders, then @REVISION (a branch, a tag or a commit)
_NAME = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?P<subfolder>(?:/[\w.-]+)*)(?:@(?P<revision>[\w./-]+))?")
DEFAULT_REVISION = "main"
# What a download fetches: the files of a model folder of HF's or open_clip's, at the repository's top (a
# pattern without a leading * matches the top alone: huggingface_hub matches it against the whole path), and of
# a diffusers repository only its text encoders and tokenizers (not the UNet, VAE or T5).
TOP_LEVEL_FILES = (HF_CONFIG, HF_SAFETENSORS, HF_SAFETENSORS_INDEX, "model-*-of-*.safetensors",  # facts.HF_SHARD
                   HF_PICKLE, HF_PICKLE_INDEX, "pytorch_model-*-of-*.bin",  # the shards HF_PICKLE_INDEX names
                   OPEN_CLIP_CONFIG, OPEN_CLIP_SAFETENSORS, OPEN_CLIP_PICKLE, PREPROCESSOR_CONFIG,
                   *sorted(TOKENIZER_FILES),
                   "model_index.json")  # what a diffusers pipeline's repository is known by (a few bytes)
DIFFUSERS_TEXT_FOLDERS = ("text_encoder*/*", "tokenizer*/*")
_OFFLINE_VALUES = ("1", "ON", "YES", "TRUE")  # huggingface_hub's reading of HF_HUB_OFFLINE


@dataclass(frozen=True)
class HubSource:
    """A source found by its repository name."""

    name: str  # as given
    repo: str
    revision: str  # as asked ("main" unless given)
    commit: str  # the snapshot's
    path: Path  # the snapshot's folder, or the subfolder asked for in it

    def describe(self) -> str:
        return f"read {self.repo} at {self.revision} (commit {self.commit}) from the Hugging Face cache: {self.path}"


@dataclass(frozen=True)
class Resolved:
    """Where a source is, and, where that could be in doubt, what it was taken as (for the summary)."""

    path: Path
    found_as: HubSource | None = None  # a repository name, found in the cache
    note: str | None = None  # which was used, where a name and a path both could be meant


def resolve(source: Path | str, offline: bool = False, subfolder: str | None = None) -> Resolved:
    """Where `source` is: itself (its `subfolder`) where it exists; else, where it reads as a repository name,
    the snapshot of that repository (its `subfolder`, or the one the name ends in) from the cache, downloaded
    first unless `offline`."""
    path = Path(source)
    named = _NAME.fullmatch(str(source).removeprefix(OPEN_CLIP_PREFIX))
    if path.exists() or path.is_symlink() or named is None:
        # in doubt only where the cache holds a repository of that name too
        cached = named is not None and (cache_folder() / f"models--{named['repo'].replace('/', '--')}").is_dir()
        shadowing = f"{source} is the local {'folder' if path.is_dir() else 'file'}, not the Hugging Face " \
                    "repository of that name in the cache" if cached else None
        return Resolved(path / subfolder if subfolder else path, note=shadowing)
    repo, revision = named["repo"], named["revision"] or DEFAULT_REVISION
    inside = "/".join(part for part in (named["subfolder"].strip("/"), subfolder or "") if part)
    snapshot = _snapshot(str(source), repo, revision, inside, offline or _offline_by_environment())
    found = snapshot / inside if inside else snapshot
    if not found.exists():
        raise InputError(source, f"{repo} at {revision} has no {inside} (its snapshot: {snapshot})")
    hub_source = HubSource(str(source), repo, revision, snapshot.name, found)
    return Resolved(found, hub_source, hub_source.describe())


def _snapshot(name: str, repo: str, revision: str, inside: str, offline: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = cache_folder()
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=offline,
                                      allow_patterns=download_patterns(inside)))
    except LocalEntryNotFoundError:
        where = "in the Hugging Face cache" if offline else "in the Hugging Face cache, nor could it be downloaded"
        # huggingface_hub's own command (huggingface-cli before its 1.0)
        fetch = f"hf download {repo}" + ("" if revision == DEFAULT_REVISION else f" --revision {revision}")
        raise InputError(name, f"is neither a file or folder here nor a model {where} (cache: {cache}); fetch it "
                               f"with `{fetch}`") from None
    except HfHubHTTPError as error:
        raise InputError(name, f"could not be fetched from the Hugging Face Hub: {error}") from None


def download_patterns(inside: str) -> list[str]:
    """The files a download fetches: a subfolder's, or a model folder's and a diffusers repository's text
    encoders."""
    if inside:
        return [inside, f"{inside}/*"]  # a file, or a folder's files
    return [*TOP_LEVEL_FILES, *DIFFUSERS_TEXT_FOLDERS]


def cache_folder() -> Path:
    """Where huggingface_hub keeps models, read from the environment now (its own constants are read once, at
    import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def _offline_by_environment() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _OFFLINE_VALUES
