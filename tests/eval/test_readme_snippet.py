"""The README's ``simple_evaluate`` snippet runs as written, on the tiny checkpoint.

The block is read from README.md; only the checkpoint, its dtype, the task's length and the
sample count are swapped for the tiny model's (each swap asserts its text is in the block).
"""

import re
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"


def readme_snippet() -> str:
    text = README.read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "simple_evaluate" in b]
    return block


def for_the_tiny_checkpoint(block: str, checkpoint_dir: Path) -> str:
    swaps = {
        '"/tmp/focusft-Qwen2.5-7B/epoch_4"': repr(str(checkpoint_dir)),
        '"bfloat16"': '"float32"',
        "focusft_qa1_4k": "focusft_qa1_512",
        '{"num_samples": 20}': '{"num_samples": 2}',
    }
    for old, new in swaps.items():
        assert old in block, old
        block = block.replace(old, new)
    return block


def test_the_readme_simple_evaluate_snippet_runs(tiny_dir, capsys):
    block = for_the_tiny_checkpoint(readme_snippet(), tiny_dir)
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)
    results = namespace["results"]["results"]["focusft_qa1_512"]
    assert 0.0 <= results["exact_match,none"] <= 1.0
    assert namespace["results"]["n-samples"]["focusft_qa1_512"]["effective"] == 2
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(results["exact_match,none"])
