"""Tiny random transformers models for tests and benchmarks, built from a config in code: no hub.

``train_tiny_tokenizer`` trains a BPE tokenizer (the ``tokenizers`` library) on a few sentences in
milliseconds, with a chat template; ``build_tiny_model`` makes a 2-layer, 64-dimension Llama or
GPT-2 with random weights (deterministic for a seed); ``write_tiny_model`` saves both to a folder
that ``from_pretrained`` and ``TransformersBackend`` load. Random weights emit random tokens:
``eos_reachable=False`` makes greedy decoding never pick end-of-sequence, for tests that need
exactly N tokens.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from llamatelemetry_transformers._deps import import_torch, import_transformers

__all__ = ["DEFAULT_TEXTS", "DEFAULT_CHAT_TEMPLATE", "train_tiny_tokenizer", "build_tiny_model", "write_tiny_model"]

DEFAULT_TEXTS: Final = (
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today?",
    "once upon a time there was a small red fox who told a story",
    "the user asks and the assistant answers, the system sets the rules",
    "tell me a story about the sea, the sun and the moon",
)

#: A ChatML-like template over the tokenizer's own special tokens.
DEFAULT_CHAT_TEMPLATE: Final = (
    "{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)

_SPECIAL: Final = ("<unk>", "<s>", "</s>", "<pad>")


def train_tiny_tokenizer(texts: Sequence[str] = DEFAULT_TEXTS, *, vocab_size: int = 256,
                         chat_template: str | None = DEFAULT_CHAT_TEMPLATE) -> Any:
    """A ``PreTrainedTokenizerFast`` (BPE, metaspace words) trained on ``texts``, with ``<s>``/``</s>``/``<pad>``."""
    tokenizers: Any = importlib.import_module("tokenizers")
    transformers = import_transformers("train_tiny_tokenizer")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    bpe.decoder = tokenizers.decoders.Metaspace()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(_SPECIAL), show_progress=False)
    bpe.train_from_iterator(list(texts) * 4, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                                     eos_token="</s>", pad_token="<pad>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model(tokenizer: Any, architecture: str = "llama", *, seed: int = 0, hidden_size: int = 64,
                     layers: int = 2, heads: int = 4, max_positions: int = 256, eos_reachable: bool = True) -> Any:
    """A random ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` sized for ``tokenizer``, in eval mode."""
    transformers = import_transformers("build_tiny_model")
    torch = import_torch("build_tiny_model")
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    vocab = len(tokenizer)
    if architecture == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_positions,
            **special)
        model_class = transformers.LlamaForCausalLM
    elif architecture == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab, n_embd=hidden_size, n_layer=layers, n_head=heads,
                                         n_positions=max_positions, **special)
        model_class = transformers.GPT2LMHeadModel
    else:
        raise ValueError(f"architecture={architecture!r}: build_tiny_model makes 'llama' or 'gpt2'.")
    with torch.random.fork_rng(devices=[]):  # deterministic weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not eos_reachable:
        _hold_eos_down(torch, model, tokenizer.eos_token_id, vocab)
    return model.eval()


def _hold_eos_down(torch: Any, model: Any, eos: int, vocab: int) -> None:
    # With output rows w_eos = w_a / 2 and w_b = -w_a, max(logit_a, logit_b) = |logit_a| > logit_eos for
    # every hidden state: greedy decoding can never pick end-of-sequence. a and b are the last two tokens.
    weight = model.get_output_embeddings().weight
    a, b = vocab - 1, vocab - 2
    with torch.no_grad():
        weight[eos] = weight[a] * 0.5
        weight[b] = -weight[a]


def write_tiny_model(folder: str | os.PathLike[str], architecture: str = "llama", *, seed: int = 0,
                     chat_template: str | None = DEFAULT_CHAT_TEMPLATE, eos_reachable: bool = True) -> Path:
    """Train a tokenizer, build a tiny model and ``save_pretrained`` both into ``folder``; returns the folder."""
    target = Path(folder)
    tokenizer = train_tiny_tokenizer(chat_template=chat_template)
    model = build_tiny_model(tokenizer, architecture, seed=seed, eos_reachable=eos_reachable)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
