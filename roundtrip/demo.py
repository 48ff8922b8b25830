"""`make demo`: build a small random OpenAI CLIP, convert it to HF and back, verify, and say what happened.

No downloads: the checkpoint is made here with OpenAI's own model code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from click.testing import CliRunner


def main() -> None:
    import torch

    from roundtrip.cli import main as clipconv
    from roundtrip.examples import DEMO, random_openai_model, save_torchscript_archive

    with tempfile.TemporaryDirectory(prefix="clipconv-demo-") as workdir:
        work = Path(workdir)
        source, hf_folder, back = work / "ViT-demo.pt", work / "ViT-demo-hf", work / "ViT-demo-back.pt"
        print(f"1. Building a random OpenAI CLIP with clip.model.CLIP ({DEMO.describe()}),")
        print("   halved to OpenAI's fp16/fp32 mix and saved as a TorchScript archive like OpenAI's releases:")
        print(f"   {source}")
        model = random_openai_model(DEMO, seed=0)
        save_torchscript_archive(model, source)
        original = model.state_dict()  # now with the archive's three metadata tensors
        runner = CliRunner()
        steps = (("2.", ["to-hf", str(source), str(hf_folder)]), ("3.", ["to-openai", str(hf_folder), str(back)]))
        for step, args in steps:
            print(f"\n{step} clipconv {' '.join(args)}")
            result = runner.invoke(clipconv, args, catch_exceptions=False)
            print(result.output.rstrip())
            if result.exit_code:
                raise SystemExit(result.exit_code)
        print(f"\n4. Comparing {back.name} with the model that was archived, tensor by tensor:")
        returned = torch.load(back, map_location="cpu", weights_only=True)
        same = [k for k in original if k in returned and original[k].dtype == returned[k].dtype
                and torch.equal(original[k], returned[k])]
        print(f"   {len(same)} of {len(original)} tensors identical in bits and dtype; "
              f"{len(returned)} tensors returned")
        if len(same) != len(original) or len(returned) != len(original):
            raise SystemExit("round trip was not exact")
        print("\nRound trip exact. Try it on your own checkpoint: clipconv to-hf --help")


if __name__ == "__main__":
    main()
