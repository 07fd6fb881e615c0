"""A Hugging Face tokenizer folder as GGUF tokenizer metadata, in the form llama.cpp's tokenizers read.

Two styles are written, chosen from ``tokenizer.json``:

- ``llama`` (SentencePiece-style BPE with byte fallback, as Llama 2 and Mistral): the tokens with
  ``<0xNN>`` byte tokens, scores that order the merges (llama.cpp's SentencePiece tokenizer merges
  the highest-scoring pair first, so a merge of rank ``r`` scores ``-r``), and whether a space is
  put before the text;
- ``gpt2`` (byte-level BPE, as Llama 3, Qwen2 and GPT-2): the byte-level token strings, the merges,
  and the pre-tokenizer llama.cpp must split with (recognised from the ``tokenizer.json`` regex).

Special token ids, add-BOS/EOS flags and the chat template come from the ``gguf`` package's
``SpecialVocab`` (``tokenizer_config.json``, ``chat_template.jinja``, ``config.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from llamatelemetry.quantization.gguf import UnsupportedTokenizerError

__all__ = ["VocabSummary", "add_vocab", "tokenizer_style"]

# The pre-tokenizer split patterns of the byte-level tokenizers llama.cpp knows, as they appear in
# tokenizer.json, and llama.cpp's name for each (its ``tokenizer.ggml.pre``).
_LLAMA3_SPLIT: Final = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                        r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT: Final = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_PRE: Final = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
_BYTE_TOKEN: Final = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@attrs.frozen
class VocabSummary:
    """What was written: the tokenizer style (``llama``/``gpt2``), llama.cpp's pre-tokenizer, token and merge counts."""

    model: str
    pre: str | None
    tokens: int
    merges: int
    chat_template: bool


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return data if isinstance(data, dict) else {}


def _parts(component: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """A tokenizer.json component as a flat list (a ``Sequence`` is unpacked)."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        inner = component.get("pretokenizers") or component.get("normalizers") or component.get("decoders") or []
        return [part for item in inner for part in _parts(item)]
    return [component]


def tokenizer_style(tokenizer_json: Mapping[str, Any], where: str = "tokenizer.json") -> str:
    """``"llama"`` (byte-fallback BPE) or ``"gpt2"`` (byte-level BPE); else an ``UnsupportedTokenizerError``."""
    model = tokenizer_json.get("model") or {}
    kind = model.get("type")
    if kind == "BPE" and model.get("byte_fallback"):
        return "llama"
    pre_types = {part.get("type") for part in _parts(tokenizer_json.get("pre_tokenizer"))}
    if kind == "BPE" and "ByteLevel" in pre_types:
        return "gpt2"
    if kind == "BPE" and ("Metaspace" in pre_types or _space_prefix(tokenizer_json)):
        # HF turns a character outside the vocabulary into <unk>; llama.cpp's SentencePiece tokenizer looks for
        # its <0xNN> byte tokens and aborts the process when they are missing.
        raise UnsupportedTokenizerError(
            f"{where} holds a SentencePiece-style BPE tokenizer without byte fallback (model.byte_fallback is false, "
            "no <0x00>..<0xFF> tokens): llama.cpp would abort on any character outside its vocabulary. Use a "
            "tokenizer with byte fallback (as Llama 2 and Mistral have) or a byte-level one")
    listed = ", ".join(sorted(map(str, pre_types))) or "none"
    raise UnsupportedTokenizerError(
        f"{where} holds a {kind or 'unknown'} tokenizer (pre-tokenizers: {listed})"
        "; llamatelemetry's GGUF writer handles byte-fallback BPE (Llama 2, Mistral) and byte-level BPE "
        "(Llama 3, Qwen2, GPT-2)")


def _byte_level_pre(tokenizer_json: Mapping[str, Any], where: str) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level tokenizer, recognised from its split regex."""
    parts = _parts(tokenizer_json.get("pre_tokenizer"))
    splits = [part for part in parts if part.get("type") == "Split"]
    byte_level = [part for part in parts if part.get("type") == "ByteLevel"]
    if not splits and byte_level and byte_level[0].get("use_regex", True) \
            and not byte_level[0].get("add_prefix_space", False):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's
    if len(splits) == 1 and byte_level and not byte_level[0].get("use_regex", True):
        pattern = (splits[0].get("pattern") or {}).get("Regex")
        if pattern in _SPLIT_PRE:
            return _SPLIT_PRE[pattern]
    raise UnsupportedTokenizerError(
        f"the byte-level pre-tokenizer in {where} is not one llamatelemetry's GGUF writer recognises (it knows "
        "GPT-2's, Llama 3's and Qwen2's splits), so llama.cpp would split text differently")


def _merge_pairs(model: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for merge in model.get("merges") or []:
        if isinstance(merge, str):
            left, _, right = merge.partition(" ")
        else:
            left, right = merge[0], merge[1]
        pairs.append((left, right))
    return pairs


def _token_table(tokenizer_json: Mapping[str, Any], vocab_size: int) -> tuple[list[str], list[int], set[int], int]:
    """Tokens by id (gaps and rows past the tokenizer padded), their types, the special ids, and the unk id."""
    import gguf

    vocab: dict[str, int] = dict((tokenizer_json.get("model") or {}).get("vocab") or {})
    added = list(tokenizer_json.get("added_tokens") or [])
    for entry in added:
        vocab[entry["content"]] = int(entry["id"])
    size = max(vocab_size, max(vocab.values(), default=-1) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(gguf.TokenType.UNUSED)] * size
    for text, index in vocab.items():
        tokens[index] = text
        types[index] = int(gguf.TokenType.NORMAL)
    special = {int(entry["id"]) for entry in added if entry.get("special")}
    for entry in added:
        index = int(entry["id"])
        types[index] = int(gguf.TokenType.CONTROL if index in special else gguf.TokenType.USER_DEFINED)
    unk_token = (tokenizer_json.get("model") or {}).get("unk_token")
    unk = vocab.get(unk_token, -1) if isinstance(unk_token, str) else -1
    return tokens, types, special, unk


def _space_prefix(tokenizer_json: Mapping[str, Any]) -> bool:
    """Whether the tokenizer puts "▁" before the text (Metaspace ``prepend_scheme`` or a ``Prepend`` normalizer)."""
    for part in _parts(tokenizer_json.get("pre_tokenizer")):
        if part.get("type") == "Metaspace":
            scheme = part.get("prepend_scheme")
            return scheme in ("first", "always") if scheme is not None else bool(part.get("add_prefix_space", True))
    return any(part.get("type") == "Prepend" for part in _parts(tokenizer_json.get("normalizer")))


def add_vocab(writer: Any, folder: Path, vocab_size: int) -> VocabSummary:
    """Write the tokenizer in ``folder`` (a ``save_pretrained`` folder with ``tokenizer.json``) to ``writer``."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UnsupportedTokenizerError(
            f"{folder} has no tokenizer.json (a fast tokenizer's file): save the tokenizer with "
            "tokenizer.save_pretrained(folder), or pass tokenizer= a transformers fast tokenizer")
    tokenizer_json = _read_json(path)
    style = tokenizer_style(tokenizer_json, str(path))
    tokens, types, special, unk = _token_table(tokenizer_json, vocab_size)
    model = tokenizer_json.get("model") or {}
    pairs = _merge_pairs(model)
    pre: str | None = None
    writer.add_tokenizer_model(style)
    if style == "llama":
        # llama.cpp's SentencePiece tokenizer merges the highest-scoring adjacent pair first; HF BPE merges the
        # lowest-ranked pair first: a token made by merge r scores -r. Tokens made by no merge score below all.
        rank: dict[str, int] = {}
        for r, (left, right) in enumerate(pairs):
            rank.setdefault(left + right, r)
        scores = [0.0] * len(tokens)
        for index, text in enumerate(tokens):
            if text in rank:
                scores[index] = -float(rank[text])
            elif len(text) > 1 and index not in special and not _BYTE_TOKEN.fullmatch(text):
                scores[index] = -float(len(pairs) + index)
            if _BYTE_TOKEN.fullmatch(text):
                types[index] = int(gguf.TokenType.BYTE)
        if unk >= 0:
            types[unk] = int(gguf.TokenType.UNKNOWN)
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(_space_prefix(tokenizer_json))
    else:
        pre = _byte_level_pre(tokenizer_json, str(path))
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    specials = gguf.SpecialVocab(folder, load_merges=style == "gpt2", n_vocab=len(tokens))
    # Said outright when the tokenizer does not add them: llama.cpp's defaults differ by tokenizer (it adds BOS
    # for SentencePiece-style ones), and a server then drops a BOS the chat template writes.
    for kind in ("bos", "eos"):
        specials.add_special_token.setdefault(kind, False)
    specials.add_to_gguf(writer, quiet=True)
    return VocabSummary(model=style, pre=pre, tokens=len(tokens), merges=len(specials.merges) if style == "gpt2" else 0,
                        chat_template=specials.chat_template is not None)


def tokenizer_files(folder: Path) -> Sequence[Path]:
    """The tokenizer files in ``folder`` that the export reads."""
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
             "chat_template.json")
    return [folder / name for name in names if (folder / name).is_file()]
