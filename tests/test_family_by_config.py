"""Where a model family is chosen: in configs (transformer, VAE, text encoder folders), the image and text owners and
``conversion/``, never in the pipeline, session, sequence or training code. Their code (comments and docstrings
left out, since prose may name the official models) must not name a family or a family-only piece."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffusers_vincie"
FAMILY_FREE = sorted((PACKAGE / "pipelines").rglob("*.py")) + [PACKAGE / "sequence.py"]
FAMILY_FREE += sorted((PACKAGE / "training").rglob("*.py"))
# family names, their text encoders, files, VAE classes and RoPE variants
FAMILY_WORDS = re.compile(r"7b|3b|t5|flan|qwen|llm14b|ema_vae|mmrope3d|VincieAutoencoderKL", re.IGNORECASE)


def code_tokens(source: str) -> list[tuple[int, str]]:
    """``(line, token)`` of a module's code: comments and docstrings dropped, every other string kept."""
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstring_lines.update(range(first.lineno, first.end_lineno + 1))
    return [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type != tokenize.COMMENT and token.start[0] not in docstring_lines
    ]


def test_the_scan_sees_code_and_skips_prose():
    source = '"""VINCIE-7B docs."""\n# the 7B family\nx = "flan"\n'
    assert [token for _, token in code_tokens(source) if FAMILY_WORDS.search(token)] == ['"flan"']


@pytest.mark.parametrize("path", FAMILY_FREE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_family_branch_in_pipeline_session_sequence_or_training(path: Path):
    hits = [f"{line}: {token}" for line, token in code_tokens(path.read_text()) if FAMILY_WORDS.search(token)]
    assert hits == [], f"{path.relative_to(PACKAGE)} names a model family in code: {hits}"
