"""Tiny random models of every supported family, with tiny tokenizers of their real kind.

Each model has 2 layers and hidden size 32 and is saved by ``save_pretrained`` the way a
pretrained checkpoint is published: encoders as the bare model, decoders with their LM head.
Tokenizers are trained here, offline, with the ``tokenizers`` library on the words of
:func:`factories.separable_texts`, then handed to the family's own tokenizer class:

- WordPiece (BERT, DistilBERT, ELECTRA, MPNet): the fixed vocabulary of ``factories.VOCAB``;
- byte-level BPE (RoBERTa, GPT-2, ModernBERT): pieces such as ``Ġmovie``;
- Unigram with ``▁`` word starts (ALBERT, DeBERTa-v2);
- ``▁`` BPE with byte fallback (Llama).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from factories import FILLER_WORDS, NEGATIVE_WORDS, POSITIVE_WORDS, VOCAB

HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 32, 2, 2, 64, 128
WORDS = POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS[:-2]
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) + f" {i} {i * 7}" for i in range(len(WORDS))]


def _trained(model, trainer, pre_tokenizer) -> dict:
    """Train a ``tokenizers`` model on :data:`CORPUS`; return its JSON ``model`` section."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return json.loads(tokenizer.to_str())["model"]


def byte_level_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a tiny byte-level BPE (GPT-2 style, ``Ġ`` word starts)."""
    from tokenizers import models, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    section = _trained(models.BPE(), trainer, byte_level)
    return section["vocab"], [tuple(m) for m in section["merges"]]


def metaspace_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a tiny ``▁`` BPE with the 256 byte-fallback pieces (Llama)."""
    from tokenizers import models, pre_tokenizers, trainers

    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=380, special_tokens=specials + bytes_, show_progress=False
    )
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    section = _trained(models.BPE(byte_fallback=True), trainer, metaspace)
    return section["vocab"], [tuple(m) for m in section["merges"]]


def unigram(specials: list[str]) -> list[tuple[str, float]]:
    """(piece, score) pairs of a tiny Unigram model with ``▁`` word starts (ALBERT style)."""
    from tokenizers import models, pre_tokenizers, trainers

    trainer = trainers.UnigramTrainer(
        vocab_size=160, special_tokens=specials, unk_token=specials[1], show_progress=False
    )
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    section = _trained(models.Unigram(), trainer, metaspace)
    return [(piece, float(score)) for piece, score in section["vocab"]]


def _wordpiece(cls_name: str, specials: list[str]) -> Callable:
    def build():
        import transformers

        words = [w for w in VOCAB if w not in {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}]
        vocab = {token: i for i, token in enumerate(specials + words)}
        return getattr(transformers, cls_name)(vocab=vocab)

    return build


def _roberta():
    from transformers import RobertaTokenizer

    vocab, merges = byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return RobertaTokenizer(vocab=vocab, merges=merges)


def _gpt2():
    from transformers import GPT2Tokenizer

    vocab, merges = byte_level_bpe(["<|endoftext|>"])
    return GPT2Tokenizer(vocab=vocab, merges=merges)  # no pad token, as published


def _modernbert():
    """ModernBERT ships a byte-level BPE with BERT-style [CLS] … [SEP] around each text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    vocab, merges = byte_level_bpe(specials)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token="[MASK]",
    )  # fmt: skip


def _albert():
    from transformers import AlbertTokenizer

    return AlbertTokenizer(vocab=unigram(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]))


def _deberta_v2():
    from transformers import DebertaV2Tokenizer

    return DebertaV2Tokenizer(vocab=unigram(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))


def _llama():
    from transformers import LlamaTokenizer

    vocab, merges = metaspace_bpe(["<unk>", "<s>", "</s>"])
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)  # no pad, as published


TOKENIZERS: dict[str, Callable] = {
    "bert": _wordpiece("BertTokenizer", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    "distilbert": _wordpiece("DistilBertTokenizer", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    "electra": _wordpiece("ElectraTokenizer", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    "mpnet": _wordpiece("MPNetTokenizer", ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]),
    "roberta": _roberta,
    "gpt2": _gpt2,
    "modernbert": _modernbert,
    "albert": _albert,
    "deberta-v2": _deberta_v2,
    "llama": _llama,
}
FAMILIES = tuple(TOKENIZERS)
DECODERS = ("gpt2", "llama")


def _config(family: str, tokenizer):
    """The family's config at 2 layers x hidden 32, special token ids from ``tokenizer``."""
    from transformers import AutoConfig

    sizes = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": POSITIONS,
    }
    ids = {
        f"{name}_token_id": getattr(tokenizer, f"{name}_token_id")
        for name in ("pad", "bos", "eos")
        if getattr(tokenizer, f"{name}_token_id", None) is not None
    }
    extra = {
        "distilbert": {"dim": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS, "hidden_dim": FFN},
        "electra": {"embedding_size": 16},  # projected to hidden size, as in electra-small
        "albert": {"embedding_size": 16, "num_hidden_groups": 1},  # one shared layer
        "gpt2": {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_positions": POSITIONS},
        "roberta": {"max_position_embeddings": POSITIONS + 2},  # positions start after pad
        "modernbert": {
            "global_attn_every_n_layers": 2,
            "local_attention": 16,
            **dict.fromkeys(("bos_token_id", "cls_token_id"), tokenizer.cls_token_id),
            **dict.fromkeys(("eos_token_id", "sep_token_id"), tokenizer.sep_token_id),
        },
        "deberta-v2": {"relative_attention": True, "pos_att_type": ["c2p", "p2c"]},
        "llama": {"num_key_value_heads": HEADS, "tie_word_embeddings": False},
    }.get(family, {})
    if family in ("distilbert", "gpt2"):
        sizes = {"vocab_size": len(tokenizer)}
    return AutoConfig.for_model(family, **{**sizes, **ids, **extra})


def make_family_model(family: str, folder: Path, seed: int = 0) -> Path:
    """Save a tiny random ``family`` model and its tokenizer into ``folder``; return it.

    Encoders are saved as the bare model (``AutoModel``), decoders as ``AutoModelForCausalLM``:
    fine-tuning then adds the classification head, as it would to a published checkpoint.
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = TOKENIZERS[family]()
    config = _config(family, tokenizer)
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if family in DECODERS else AutoModel
    model = auto.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
