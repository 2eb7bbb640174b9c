"""The training memory formula of docs/training.md (states from parameter counts, activations per block) against
measurements on tiny configs (benchmarks/training_memory.py --check)."""

from conftest import REPO, load_script


def test_memory_formula_matches_tiny_measurements():
    bench = load_script(REPO / "benchmarks" / "training_memory.py", "training_memory")
    result = bench.check()  # raises on a mismatch
    assert result["state_bytes"] > 0 and len(result["activation_bytes_per_token"]) == 3
