"""The README's data and training commands run verbatim, in order, in a fresh folder (as a user would run them from
a checkout: the repository's script folders and the shipped default model are reachable at the same paths)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("Sessions from video", "Training")
MAX_RSS_BYTES = 2 * 1024**3  # the README's training commands on the default model stay under 2 GB


def readme_blocks(section: str) -> list[str]:
    """The fenced ``bash`` blocks of a ``## section`` of README.md."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match is not None, f"README.md has no section '## {section}'"
    return re.findall(r"^```bash\n(.*?)^```", match.group(1), flags=re.S | re.M)


def run_block(block: str, cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Runs a block with ``bash -e`` in a fresh wrapper process; returns the result and the peak RSS (bytes) of the
    largest process the block started (Linux ``ru_maxrss`` of the wrapper's children, in KiB)."""
    wrapper = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(['bash', '-e', '-o', 'pipefail', '-c', sys.argv[1]]).returncode; "
        "print('MAX_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", wrapper, block], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    peak = re.findall(r"^MAX_RSS_KIB (\d+)$", result.stdout, flags=re.M)
    return result, int(peak[-1]) * 1024 if peak else 0


def test_readme_sections_have_their_commands():
    assert len(readme_blocks("Sessions from video")) == 1
    training = readme_blocks("Training")
    assert len(training) == 1 and "train_vincie.py" in training[0] and "train_vincie_lora.py" in training[0]


def test_readme_data_and_training_commands_run_verbatim(tmp_path):
    """Videos -> sessions -> load_dataset, then pretraining and LoRA SFT on them; the training commands peak under
    2 GB RSS and write a loadable pipeline and LoRA weights."""
    for folder in ("dataset_scripts", "training_scripts", "src"):
        (tmp_path / folder).symlink_to(ROOT / folder, target_is_directory=True)
    for section in SECTIONS:
        for block in readme_blocks(section):
            result, peak = run_block(block, tmp_path)
            assert result.returncode == 0, f"README '{section}' block failed:\n{block}\n{result.stderr[-3000:]}"
            if section == "Sessions from video":
                assert "num_rows: 100" in result.stdout  # load_dataset('sessions') reads one session per video
            else:
                assert 0 < peak < MAX_RSS_BYTES, f"peak RSS {peak / 1024**3:.2f} GB"
    assert (tmp_path / "runs" / "pretrain" / "pipeline" / "model_index.json").is_file()
    assert (tmp_path / "runs" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_lora_trains_with_the_pretrained_layout_unless_told_otherwise(tmp_path):
    """No --attention_layout: the pretrained transformer's (the default model is block-causal); a different explicit
    one is still refused."""
    from conftest import load_script

    from diffusers_vincie.default_model import DEFAULT_MODEL
    from diffusers_vincie.models.transformer_vincie import VincieTransformer
    from diffusers_vincie.utils.cli import UsageError

    sys.path.insert(0, str(ROOT / "training_scripts"))
    train = load_script(ROOT / "training_scripts" / "train_vincie.py", "train_vincie")
    lora = load_script(ROOT / "training_scripts" / "train_vincie_lora.py", "train_vincie_lora")
    base = ["--pretrained_model_name_or_path", DEFAULT_MODEL, "--synthetic_world", "--output_dir", str(tmp_path)]
    args = lora.parse_args(base)
    assert args.attention_layout == "block_causal" and args.frame_index == "slots"
    transformer = VincieTransformer.from_pretrained(DEFAULT_MODEL, subfolder="transformer")
    assert train.build_transformer(args, {"transformer": transformer}) is transformer
    explicit = lora.parse_args(base + ["--attention_layout", "full"])
    with pytest.raises(
        UsageError, match="--attention_layout full, but the pretrained transformer uses 'block_causal'"
    ):
        train.build_transformer(explicit, {"transformer": transformer})
