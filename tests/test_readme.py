"""The README's commands as a newcomer runs them: in the venv, writing where git ignores it, reading what was written.

Checkpoint paths in the README must be ones its training commands write: the 7B config's
``output_dir`` (or its LoRA config's) with one ``epoch_E`` per epoch (E from 0), the four-variant
loop's output directories, or the demo's runs.
"""

import re
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from focusft.demo.settings import VARIANTS

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def commands() -> list[str]:
    """Command lines of the README's fenced and indented code blocks, continuation lines joined."""
    fenced = [body for language, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S) if language in ("", "bash")]
    blocks = fenced + re.findall(r"\n\n((?: {4}.*\n)+)", README)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def written_checkpoints() -> set[str]:
    config = OmegaConf.load(ROOT / "configs/qwen2_5/7B_focusft.yaml")
    epochs = range(config.epochs)
    paths = {f"{config.output_dir}/epoch_{e}" for e in epochs}
    lora = OmegaConf.load(ROOT / "configs/qwen2_5/7B_focusft_lora.yaml")
    paths |= {f"{lora.output_dir}/epoch_{e}" for e in range(lora.epochs)}
    # The four-variant loop's output_dir, for each (bilevel, attention) of the table.
    loop = "output_dir=/tmp/focusft-7B-bilevel_$1-$2"
    assert loop in README
    for variant in VARIANTS.values():
        name = f"/tmp/focusft-7B-bilevel_{str(variant.bilevel).lower()}-{variant.attention}"
        paths |= {f"{name}/epoch_{e}" for e in epochs}
    demo_epochs = range(OmegaConf.load(ROOT / "configs/tiny/demo_cpu.yaml").epochs)
    paths |= {f"outputs/demo/default/runs/train_{v}/epoch_{e}" for v in VARIANTS for e in demo_epochs}
    return paths


def test_the_readme_says_to_activate_the_venv():
    assert "source .venv/bin/activate" in README


def test_every_checkpoint_path_in_the_readme_is_one_its_commands_write():
    mentioned = set(re.findall(r"(?<![<>\w./-])[\w./-]+/epoch_\d+", README))  # no placeholders
    assert mentioned, "no checkpoint paths found"
    assert mentioned <= written_checkpoints(), sorted(mentioned - written_checkpoints())


def test_readme_commands_write_only_where_git_ignores_it():
    outputs = [
        match
        for line in commands()
        for match in re.findall(r"(?:--output-dir|--output_dir|--out)[ =](\S+)|output_dir=(\S+)", line)
    ]
    paths = [a or b for a, b in outputs]
    assert len(paths) >= 4
    for path in paths:
        if not path.startswith("/"):
            ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
            assert ignored, f"{path}: a README command writes it into the repository, where git does not ignore it"
