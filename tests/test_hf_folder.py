"""The folder to-hf writes works like the hub's openai/clip-vit-* folders, offline, and says where it came from."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter

import pytest
import torch
import yaml

from roundtrip import __version__, openai_config
from roundtrip.examples import DEMO

from conftest import image, import_clip, run_cli

LABELS = ["cat", "dog", "diagram"]
PIPELINE_TEMPLATE = "This is a photo of {}."  # the zero-shot pipeline's default hypothesis template


def test_processor_and_pipeline_load_offline_and_reproduce_openais_zero_shot(demo_hf_folder, demo_state_dict):
    from transformers import CLIPProcessor, pipeline

    processor = CLIPProcessor.from_pretrained(demo_hf_folder)
    assert processor.tokenizer is not None and processor.image_processor is not None
    classifier = pipeline("zero-shot-image-classification", model=str(demo_hf_folder))
    picture = image(640, 480)
    scores = {row["label"]: row["score"] for row in classifier(picture, candidate_labels=LABELS)}

    clip = import_clip()
    model = clip.model.CLIP(**openai_config.clip_kwargs(DEMO)).eval()
    model.load_state_dict({key: t.float() for key, t in demo_state_dict.items()})
    with torch.no_grad():
        logits, _ = model(clip.clip._transform(DEMO.image_resolution)(picture)[None],
                          clip.tokenize([PIPELINE_TEMPLATE.format(label) for label in LABELS]))
    expected = dict(zip(LABELS, logits.softmax(dim=-1)[0].tolist(), strict=True))
    assert max(abs(scores[label] - expected[label]) for label in LABELS) <= 1e-3


def front_matter_and_body(card: str) -> tuple[dict, str]:
    match = re.fullmatch(r"---\n(.*?)\n---\n(.*)", card, flags=re.DOTALL)
    assert match, card[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def test_model_card_has_hub_front_matter_provenance_and_the_measured_verification(tmp_path, demo_state_dict_file):
    result = run_cli("to-hf", demo_state_dict_file, tmp_path / "hf")
    assert result.exit_code == 0, result.output
    metadata, body = front_matter_and_body((tmp_path / "hf" / "README.md").read_text(encoding="utf-8"))
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "zero-shot-image-classification"
    assert demo_state_dict_file.name in body
    assert hashlib.sha256(demo_state_dict_file.read_bytes()).hexdigest() in body
    assert f"clipconv {__version__}" in body
    source_dtypes = Counter(str(t.dtype).removeprefix("torch.")
                            for t in torch.load(demo_state_dict_file, weights_only=True).values())
    for dtype, count in source_dtypes.items():
        assert f"{dtype}: {count} tensors" in body
    figure = re.search(r"max \|difference\| = (\S+) at (\S+),", result.stdout).group(1, 2)
    assert f"= {figure[0]} over every layer's output" in body and f"(largest at {figure[1]};" in body


def test_model_card_says_when_verification_was_skipped(tmp_path, demo_state_dict_file):
    assert run_cli("to-hf", demo_state_dict_file, tmp_path / "hf", "--no-verify").exit_code == 0
    _, body = front_matter_and_body((tmp_path / "hf" / "README.md").read_text(encoding="utf-8"))
    assert "skipped" in body and "logits\\| =" not in body


def _copy(folder, tmp_path):
    copy = tmp_path / "hf"
    shutil.copytree(folder, copy)
    return copy


def _swap_two_vocab_entries(folder) -> None:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab["cat</w>"], vocab["dog</w>"] = vocab["dog</w>"], vocab["cat</w>"]
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")


def _only_tokenizer_json_without_one_merge(folder) -> None:
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink()
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["model"]["merges"].pop()
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")


def test_to_openai_ignores_openais_tokenizer_files_silently(tmp_path, demo_hf_folder):
    result = run_cli("to-openai", demo_hf_folder, tmp_path / "model.pt")
    assert result.exit_code == 0, result.output
    assert "clip.tokenize" not in result.output


FOREIGN_TOKENIZERS = {
    "vocab.json with two entries swapped": (_swap_two_vocab_entries, "will not reproduce", "its vocabulary differs"),
    "only tokenizer.json, one merge short": (_only_tokenizer_json_without_one_merge, "will not reproduce",
                                             "its merges differ"),
    "vocab.json not JSON": (lambda folder: (folder / "vocab.json").write_text("{"), "may not reproduce",
                            "its tokenizer files are unreadable"),
    "vocab.json a list": (lambda folder: (folder / "vocab.json").write_text("[1, 2]"), "may not reproduce",
                          "its tokenizer files are unreadable (the vocabulary is not a table of tokens to ids)"),
    "merges.txt with a triple": (lambda folder: (folder / "merges.txt").write_text("a b c\n"), "may not reproduce",
                                 "its tokenizer files are unreadable (a merge is not a pair of tokens)"),
}


@pytest.mark.parametrize("case", FOREIGN_TOKENIZERS)
def test_to_openai_warns_when_the_folders_tokenizer_is_not_openais(tmp_path, demo_hf_folder, case):
    damage, verdict, difference = FOREIGN_TOKENIZERS[case]
    folder = _copy(demo_hf_folder, tmp_path)
    damage(folder)
    result = run_cli("to-openai", folder, tmp_path / "model.pt")
    assert result.exit_code == 0, result.output
    assert f"clip.tokenize {verdict} this folder's tokenizer: {folder}: {difference}" in result.stdout
