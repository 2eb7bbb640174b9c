"""Runs diffusers' own tester mixins against our classes (see docs/diffusers_conventions.md, "Conformance").

``tests`` must be diffusers' test package (``PYTHONPATH=<diffusers checkout>``, set by
scripts/run_diffusers_conformance.sh), never this repository's ``tests/``. The only tests not run are listed in
``EXCLUDED`` below, each with its reason; they show up as skipped, with that reason, in the pytest summary.
"""

from __future__ import annotations

import pytest

# --- tests that assume a batch axis: a VINCIE call is one editing session, `prompt` is a list of turns and
# `image` a list of reference images, so neither can be repeated along a batch axis.
_BATCH = (
    "assumes a batch axis: the session design has none (`prompt` lists the turns of one session, "
    "`image` its reference images); several sessions are several calls"
)
_FASTER_CACHE = (
    "assumes a batch axis: FasterCache splits the denoiser's input/output along dim 0 into unconditional and "
    "conditional halves of a dense (B, C, F, H, W) batch and FFTs its H, W; VincieTransformer takes and returns "
    "packed (sum F*h*w, C) latent pixels, with no batch or spatial axes"
)
EXCLUDED = {
    "test_inference_batch_consistent": _BATCH + " (it batches `prompt` and `image` into lists)",
    "test_inference_batch_single_identical": _BATCH + " (it batches `prompt` and `image` into lists)",
    "test_num_images_per_prompt": _BATCH + " (it repeats `prompt` as a batch of 2; candidates per turn are "
    "covered by tests/test_pipeline_conventions.py)",
    # model and pipeline level (same name): FasterCache approximates the unconditional half of a CFG batch
    "test_faster_cache_inference": _FASTER_CACHE,
    "test_faster_cache_state": _FASTER_CACHE,
}


def pytest_collection_modifyitems(config, items):
    seen = set()
    for item in items:
        name = item.originalname if hasattr(item, "originalname") else item.name
        name = name.split("[")[0]
        if name in EXCLUDED:
            seen.add(name)
            item.add_marker(pytest.mark.skip(reason=f"EXCLUDED: {EXCLUDED[name]}"))
    unknown = set(EXCLUDED) - seen
    whole_run = (
        not config.option.keyword
        and not config.option.markexpr
        and all(arg.rstrip("/").endswith("conformance") for arg in config.args)
    )
    if unknown and whole_run:  # an exclusion that matches nothing is stale: say so instead of keeping it
        raise pytest.UsageError(f"conformance/conftest.py: EXCLUDED names no collected test: {sorted(unknown)}")


def pytest_configure(config):
    """Fails early, with the fix, when ``tests`` is not a diffusers test checkout (e.g. this repository's own)."""
    import importlib.util

    spec = importlib.util.find_spec("tests.models.testing_utils")
    if spec is None or importlib.util.find_spec("tests.pipelines.test_pipelines_common") is None:
        raise pytest.UsageError(
            "the `tests` package is not diffusers' test suite; run scripts/run_diffusers_conformance.sh "
            "<path-to-diffusers-source-checkout> (it puts that checkout first on PYTHONPATH)"
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line splitting the skips into our exclusions and diffusers' own hardware/version skips."""
    stats = terminalreporter.stats
    skipped = stats.get("skipped", [])
    excluded = sum(1 for report in skipped if "EXCLUDED:" in str(report.longrepr))
    counts = {key: len(stats.get(key, [])) for key in ("passed", "failed", "error", "xfailed", "xpassed")}
    terminalreporter.write_line(
        f"conformance: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
        f"{excluded} excluded (EXCLUDED in conformance/conftest.py), {len(skipped) - excluded} skipped by "
        f"diffusers' own marks (accelerator, CUDA backends, unset model features), {counts['xfailed']} xfailed, "
        f"{counts['xpassed']} xpassed (diffusers' non-strict xfail marks)"
    )
