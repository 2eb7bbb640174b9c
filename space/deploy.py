"""Creates or updates the VINCIE Space on the Hugging Face Hub.

    python space/deploy.py --repo-id USER/NAME             # create (if needed) and upload
    python space/deploy.py --repo-id USER/NAME --dry-run   # list exactly the files that would be uploaded

The Space gets ``app.py``, ``model_choice.py`` and ``serving.py``, ``README.md`` (front matter),
``requirements.txt``, the example images and the source of the ``diffusers_vincie`` package (with its embedded
default model, if any) next to ``app.py``, so the Space imports the very code of this checkout. Authentication: ``huggingface-cli login`` or ``--token``/``HF_TOKEN``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Optional

SPACE_DIR = Path(__file__).resolve().parent
REPO_ROOT = SPACE_DIR.parent
PACKAGE_DIR = REPO_ROOT / "src" / "diffusers_vincie"
SPACE_FILES = ("app.py", "model_choice.py", "serving.py", "README.md", "requirements.txt")
SKIPPED_PARTS = ("__pycache__", ".ipynb_checkpoints")
SKIPPED_SUFFIXES = (".pyc", ".pyo")
STALE_PATTERNS = ["diffusers_vincie/**", "examples/**"]  # removed from the Space unless uploaded again


def upload_plan(space_dir: Path = SPACE_DIR, package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """``{path in the Space: local file}`` for every file the Space gets, sorted by Space path."""
    plan = {name: space_dir / name for name in SPACE_FILES}
    missing = [str(p) for p in plan.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Space files are missing: {missing}; run from a complete checkout.")
    for example in sorted((space_dir / "examples").glob("*")):
        if example.is_file():
            plan[f"examples/{example.name}"] = example
    if not (package_dir / "__init__.py").is_file():
        raise FileNotFoundError(
            f"{package_dir} is not the diffusers_vincie package; pass the checkout's src/ package."
        )
    for path in sorted(package_dir.rglob("*")):
        relative = path.relative_to(package_dir)
        if path.is_file() and not set(relative.parts) & set(SKIPPED_PARTS) and path.suffix not in SKIPPED_SUFFIXES:
            plan[f"diffusers_vincie/{relative.as_posix()}"] = path
    return dict(sorted(plan.items()))


def stage(plan: dict[str, Path], folder: Path) -> Path:
    """Copies the planned files into ``folder`` (the folder `upload_folder` sends)."""
    for target, source in plan.items():
        destination = folder / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return folder


def deploy(repo_id: str, dry_run: bool = False, private: bool = False, token: Optional[str] = None) -> list[str]:
    """Creates the Space if needed and uploads the planned files; returns their Space paths.

    Args:
        repo_id: ``USER/NAME`` of the Space.
        dry_run: only list the files (no network access).
        private: create the Space private.
        token: a Hub token (default: the logged-in one).
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`--repo-id` must look like USER/NAME; got {repo_id!r}.")
    plan = upload_plan()
    if dry_run:
        return list(plan)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vincie-space-upload-") as folder:
        api.upload_folder(
            repo_id=repo_id,
            repo_type="space",
            folder_path=stage(plan, Path(folder)),
            commit_message="Update the VINCIE Space",
            delete_patterns=STALE_PATTERNS,
        )
    return list(plan)


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-id", required=True, help="the Space, USER/NAME")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded and stop")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN)")
    args = parser.parse_args(argv)
    try:
        files = deploy(args.repo_id, dry_run=args.dry_run, private=args.private, token=args.token)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    if args.dry_run:
        print(f"Would upload {len(files)} files to https://huggingface.co/spaces/{args.repo_id}:")
    else:
        print(f"Uploaded {len(files)} files to https://huggingface.co/spaces/{args.repo_id}:")
    print("\n".join(files))


if __name__ == "__main__":
    main()
