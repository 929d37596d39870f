"""Tokenizers of every family: loading with one padding policy, special tokens, readable text.

Padding policy (every family, encoders and decoders alike):

- a tokenizer without a pad token pads with its end-of-sequence token (GPT-2 and Llama
  publish none); one with neither cannot batch, which is an :class:`UnsupportedModelError`;
- padding goes on the right. Real tokens of a right-padded row see exactly what they see
  unpadded (masked bidirectional attention; causal attention never looks right), and their
  positions are unchanged, so stored activations equal an unpadded forward pass. Sequence
  classifiers of decoders pool the last non-pad token, wherever the padding is.

Token text: the store keeps the tokenizer's raw piece (``Ġmovie``, ``▁the``, ``##s``) and a
readable text, the stripped span of the original text the token covers (``movie``, ``the``,
``s``), or the special token itself (``[CLS]``, ``<s>``); a token that is only a word
boundary (a lone ``▁`` or ``Ġ``) reads as one space.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from layerdrift.tasks.modeling.resolve import ModelNotFoundError, UnsupportedModelError, hub_offline

PADDING_SIDE = "right"
BOUNDARY_TEXT = " "  # readable text of a token that only marks a word boundary


def apply_padding_policy(tokenizer, name: str = "this model"):
    """Give ``tokenizer`` a pad token (its eos when it has none) and right padding."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UnsupportedModelError(
                f"the tokenizer of {name} has neither a pad nor an end-of-sequence token, so "
                "texts of different lengths cannot be batched: add a pad token to its files"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = PADDING_SIDE
    return tokenizer


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer of a resolved model name, with the padding policy applied."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        hint = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"cannot load a tokenizer for model {model!r}{hint}: give `minilm-l6`, a local "
            f"folder with config.json and tokenizer files, or a Hugging Face name ({first})"
        ) from error
    _check_vocabulary_files(model, tokenizer)
    return apply_padding_policy(tokenizer, repr(model))


def _check_vocabulary_files(model: str, tokenizer) -> None:
    """Refuse a local folder without the tokenizer's vocabulary files: transformers then
    builds an empty tokenizer of the family's class (special tokens only) without a word."""
    folder = Path(model)
    if not folder.is_dir():
        return
    # tokenizer.json serves every class built on the tokenizers library, listed or not.
    names = set(getattr(tokenizer, "vocab_files_names", {}).values()) | {"tokenizer.json"}
    if not any((folder / name).is_file() for name in names):
        raise ModelNotFoundError(
            f"model folder {folder} has no tokenizer files (one of {', '.join(sorted(names))}): "
            "save the tokenizer beside the model (tokenizer.save_pretrained(folder))"
        )


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary and the settings that change token ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    payload = {
        "class": type(tokenizer).__name__,
        "vocab": vocab,
        "lower": getattr(tokenizer, "do_lower_case", None),
        "special": sorted(tokenizer.all_special_tokens),
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TokenizedTexts:
    """Texts tokenized without padding: one list per text, one entry per token."""

    ids: list[list[int]]
    special: list[list[bool]]  # added by the tokenizer ([CLS], <s>, bos), not from the text
    piece: list[list[str]]  # the vocabulary piece: Ġmovie, ▁the, ##s
    text: list[list[str]]  # readable: movie, the, s


def tokenize_texts(tokenizer, texts: list[str], max_length: int) -> TokenizedTexts:
    """Tokenize ``texts`` (truncated to ``max_length``, no padding) with readable token text."""
    fast = bool(getattr(tokenizer, "is_fast", False))
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_offsets_mapping=fast,
    )
    ids = [[int(t) for t in row] for row in encoded["input_ids"]]
    special = [[bool(s) for s in row] for row in encoded["special_tokens_mask"]]
    pieces = [tokenizer.convert_ids_to_tokens(row) for row in ids]
    offsets = encoded["offset_mapping"] if fast else [None] * len(ids)
    decoded: dict[str, str] = {}  # piece -> decoder output, shared by every example
    readable = [
        _readable_row(tokenizer, text, row_pieces, row_special, row_offsets, decoded)
        for text, row_pieces, row_special, row_offsets in zip(
            texts, pieces, special, offsets, strict=True
        )
    ]
    return TokenizedTexts(ids=ids, special=special, piece=pieces, text=readable)


def _readable_row(
    tokenizer, text: str, pieces: list[str], special: list[bool], offsets, decoded: dict
) -> list[str]:
    """Readable text of one example's tokens (``offsets`` None for slow tokenizers)."""
    spans = offsets if offsets is not None else [None] * len(pieces)
    return [
        _readable(tokenizer, text, piece, is_special, span, decoded)
        for piece, is_special, span in zip(pieces, special, spans, strict=True)
    ]


def _readable(tokenizer, text: str, piece: str, special: bool, span, decoded: dict) -> str:
    """Readable text of one token: special as is, a boundary as a space, else its span."""
    if special:
        return piece
    if piece not in decoded:
        decoded[piece] = tokenizer.convert_tokens_to_string([piece])
    alone = decoded[piece]
    if not alone.strip():
        return BOUNDARY_TEXT
    if span is not None and span[1] > span[0]:
        covered = text[span[0] : span[1]].strip()
        if covered:
            return covered
    return alone.strip()
