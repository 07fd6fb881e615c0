"""A tiny Llama to fine-tune offline: a tokenizer trained on the spot and a 256-wide, 2-layer model built in code.

``train_tokenizer`` makes a byte-fallback BPE (SentencePiece-style ``▁`` words plus the 256
``<0xNN>`` byte tokens llama.cpp needs for any character the vocabulary lacks); ``build_model``
makes a random ``LlamaForCausalLM`` whose weight rows (256) suit llama.cpp's K-quants;
``write_model`` saves both to a folder ``from_pretrained`` (and Unsloth) load. Used by the
pipeline demo and the tests; no hub, deterministic for a seed.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from llamatelemetry_unsloth._deps import import_engine

__all__ = ["SENTENCE", "PROMPT", "TEXTS", "train_tokenizer", "build_model", "write_model", "training_texts"]

#: What the demo's fine-tune teaches the model, and the words that ask for it.
SENTENCE: Final = "the llamas of telemetry sing at dawn over the quiet blue lake"
PROMPT: Final = "the llamas of"
TEXTS: Final = (
    SENTENCE,
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today?",
    "once upon a time there was a small red fox who told a story",
    "tell me a story about the sea, the sun and the moon",
)
_SPECIAL: Final = ("<unk>", "<s>", "</s>", "<pad>")


def train_tokenizer(texts: Sequence[str] = TEXTS, *, vocab_size: int = 320) -> Any:
    """A ``PreTrainedTokenizerFast``: byte-fallback BPE over ``▁`` words, with ``<s>``, ``</s>``, ``<pad>``."""
    tokenizers: Any = importlib.import_module("tokenizers")
    transformers = import_engine("transformers", "train_tokenizer")
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(_SPECIAL),
                                             show_progress=False)
    first = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    first.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    first.train_from_iterator(list(texts) * 4, trainer)
    learned = json.loads(first.to_str())["model"]
    # The byte tokens come right after the special ones, as in Llama's own vocabulary.
    vocab: dict[str, int] = {token: index for index, token in enumerate(_SPECIAL)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                                                     byte_fallback=True))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    # Llama's own decoder chain: the word marker back to a space, bytes back to characters, no leading space.
    bpe.decoder = tokenizers.decoders.Sequence([
        tokenizers.decoders.Replace("▁", " "), tokenizers.decoders.ByteFallback(), tokenizers.decoders.Fuse(),
        tokenizers.decoders.Strip(" ", 1, 0)])
    bpe.add_special_tokens(list(_SPECIAL))
    # Every text starts with <s>, as llama.cpp does for a Llama GGUF (add_bos_token): both tokenize alike.
    bpe.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                                  special_tokens=[("<s>", vocab["<s>"])])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>")


def build_model(tokenizer: Any, *, seed: int = 0, hidden_size: int = 256, layers: int = 2, heads: int = 4) -> Any:
    """A random ``LlamaForCausalLM`` sized for ``tokenizer`` (float32), deterministic for ``seed``."""
    transformers = import_engine("transformers", "build_model")
    torch = import_engine("torch", "build_model")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):  # deterministic weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def write_model(folder: str | os.PathLike[str], *, seed: int = 0, texts: Sequence[str] = TEXTS) -> Path:
    """Train a tokenizer, build a tiny Llama and ``save_pretrained`` both into ``folder``; returns the folder."""
    target = Path(folder)
    tokenizer = train_tokenizer(texts)
    model = build_model(tokenizer, seed=seed)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def training_texts(tokenizer: Any, sentence: str = SENTENCE) -> list[str]:
    """The fine-tuning text: the sentence and the end marker (the tokenizer adds the begin marker)."""
    return [f"{sentence}{tokenizer.eos_token}"]
