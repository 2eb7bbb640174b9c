"""The training memory formula of docs/training.md (states from parameter counts, activations per block) against
measurements on tiny configs (benchmarks/training_memory.py --check)."""

from conftest import REPO, load_script


def test_memory_formula_matches_tiny_measurements():
    bench = load_script(REPO / "benchmarks" / "training_memory.py", "training_memory")
    result = bench.check()  # raises on a mismatch
    assert result["state_bytes"] > 0 and len(result["activation_bytes_per_token"]) == 3


def test_training_resolution_defaults_to_the_pretrained_models_own(tmp_path):
    """Fine-tuning the default model (native 32 px) trains at 32 px whatever size the sessions are stored at."""
    import json
    import sys
    from pathlib import Path

    from diffusers_vincie.default_model import DEFAULT_MODEL

    sys.path.insert(0, str(REPO / "training_scripts"))
    lora = load_script(REPO / "training_scripts" / "train_vincie_lora.py", "train_vincie_lora")
    common = ["--pretrained_model_name_or_path", DEFAULT_MODEL, "--dataset_name", str(tmp_path)]
    common += ["--attention_layout", "block_causal", "--output_dir", str(tmp_path / "run")]
    native = json.loads((Path(DEFAULT_MODEL) / "model_index.json").read_text())["default_resolution"]
    assert lora.parse_args(common).resolution == native == 32
    assert lora.parse_args(common + ["--resolution", "64"]).resolution == 64  # an explicit size wins
