"""GGUF export, faithful: tiny models built here, exported by our writer, run by llama.cpp (llama-cpp-python).

Each model is 256 wide (every weight row K-quant aligned), 2 layers, with a tokenizer trained here in
one of the two styles users have: SentencePiece-like byte-fallback BPE (Llama 2, Mistral) and
byte-level BPE (GPT-2's split, Llama 3's, Qwen2's). llama.cpp must give the HF tokenizer's ids and,
on the same ids, the HF model's logits.
"""

from __future__ import annotations

import errno
import json
import resource
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamatelemetry.artifacts import ArtifactManifest
from llamatelemetry.pipeline import PipelineContext
from llamatelemetry.pipeline import attributes as names
from llamatelemetry.quantization import QuantizationResult, find_stage
from llamatelemetry.quantization.gguf import (
    GGUFExportError,
    GGUFWriteError,
    UnsupportedArchitectureError,
    UnsupportedTokenizerError,
    convert_to_gguf,
)
from llamatelemetry.testing import InMemoryTelemetry

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp", reason='CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python')

CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Café, naïve, résumé, façade: accents déjà vu à Zürich.",
    "Emoji 🙂 and 🚀 rockets, numbers 12345 and 3.14159, year 2026.",
    "  Leading spaces,\ttabs and\nnew lines; the user asks, the assistant answers.",
    "Once upon a time there was a small red fox who told a story about the sea.",
]
SAMPLES = ["Hello world!", "Café naïve résumé", "🙂 rockets 🚀", "numbers 12345 and 3.14", " leading space",
           "  two spaces", "the quick brown fox"]
PROMPT = "Hello world! The quick brown fox jumps"
CHAT_TEMPLATE = ("{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ bos_token }}assistant:{% endif %}")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# ------------------------------------------------------------------ tokenizers trained here

def spm_style_tokenizer() -> Any:
    """Llama 2 / Mistral style: BPE with byte fallback over "▁"-marked text, <unk> <s> </s> then 256 byte tokens.

    As in those models' tokenizer.json, normalizers put "▁" before the text and for every space; merges
    were learnt within words, as SentencePiece learns them.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    learner.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=420, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])  # adds BOS, as Llama 2's
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                                     eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def byte_level_tokenizer(split: str | None = None) -> Any:
    """GPT-2 style (ByteLevel's own regex) or, with ``split``, Llama 3 / Qwen2 style (a Split regex, then bytes)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(ignore_merges=split == LLAMA3_SPLIT))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<|begin|>", "<|end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin|>",
                                                eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(architecture: str, tokenizer: Any, *, seed: int = 0, tied: bool = False) -> Any:
    """A random 256-wide, 2-layer ``LlamaForCausalLM``, ``MistralForCausalLM`` or ``Qwen2ForCausalLM``."""
    config_class = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                    "qwen2": transformers.Qwen2Config}[architecture]
    config = config_class(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          tie_word_embeddings=tied)
    model_class = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
                   "qwen2": transformers.Qwen2ForCausalLM}[architecture]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
        if architecture == "qwen2":  # random biases, so a wrong bias mapping shows in the logits
            with torch.no_grad():
                for layer in model.model.layers:
                    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                        proj.bias.normal_(0, 0.5)
    return model


def save(folder: Path, model: Any, tokenizer: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(path: Path) -> Any:
    return llama_cpp.Llama(str(path), n_ctx=128, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)


def llama_cpp_logits(llm: Any, ids: list[int]) -> Any:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[:len(ids)], dtype=np.float32)


def hf_logits(model: Any, ids: list[int]) -> Any:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def assert_faithful(ours: Any, theirs: Any, tolerance: float = 1e-3) -> None:
    """Logits within ``tolerance``; the same top-1 wherever HF's top two are further apart than that."""
    import numpy as np

    assert abs(ours - theirs).max() < tolerance
    top2 = np.sort(theirs, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    assert clear[-1], "the next token is a near tie in the HF model: pick another seed"
    assert (ours.argmax(-1) == theirs.argmax(-1))[clear].all()


CASES = {
    "llama-spm": ("llama", spm_style_tokenizer, False),
    "mistral-spm": ("mistral", spm_style_tokenizer, False),
    "llama-gpt2-bytelevel": ("llama", byte_level_tokenizer, False),
    "llama3-bytelevel": ("llama", lambda: byte_level_tokenizer(LLAMA3_SPLIT), True),
    "qwen2-bytelevel": ("qwen2", lambda: byte_level_tokenizer(QWEN2_SPLIT), True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_f32_export_is_faithful_in_llama_cpp(case: str, tmp_path: Path) -> None:
    architecture, make_tokenizer, tied = CASES[case]
    tokenizer = make_tokenizer()
    model = tiny_model(architecture, tokenizer, tied=tied)
    folder = save(tmp_path / case, model, tokenizer)
    result = convert_to_gguf(folder, tmp_path / f"{case}-f32.gguf", outtype="f32")
    assert isinstance(result, QuantizationResult) and result.method == "gguf_export" and result.quant_type == "F32"
    assert set(result.tensor_types) == {"F32"}
    llm = load(Path(result.output_path or ""))
    try:
        # The tokenizer: llama.cpp on the exported vocab gives HF's ids.
        for text in SAMPLES:
            expected = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected, text
        # Adding BOS/EOS as the HF tokenizer does (the SentencePiece-style one adds BOS, the byte-level ones not).
        assert llm.tokenize(PROMPT.encode(), add_bos=True) == tokenizer(PROMPT)["input_ids"]
        with_special = f"{tokenizer.bos_token}Hello world"
        assert llm.tokenize(with_special.encode(), add_bos=False, special=True) == \
            tokenizer(with_special, add_special_tokens=False)["input_ids"]
        # The model: same ids, same next-token logits, same top-1.
        ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
        assert_faithful(llama_cpp_logits(llm, ids), hf_logits(model, ids))
        # Specials and the chat template reach llama.cpp.
        assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
        assert int(llm.metadata["tokenizer.ggml.bos_token_id"]) == tokenizer.bos_token_id
        assert int(llm.metadata["tokenizer.ggml.eos_token_id"]) == tokenizer.eos_token_id
        assert llm.token_eos() == tokenizer.eos_token_id
    finally:
        llm.close()


@pytest.mark.parametrize(("outtype", "weights", "tolerance"), [
    ("f16", "F16", 0.02), ("bf16", "BF16", 0.15), ("q8_0", "Q8_0", 0.1)])
def test_smaller_outtypes_load_with_sensible_logits(outtype: str, weights: str, tolerance: float,
                                                    tmp_path: Path) -> None:
    tokenizer = byte_level_tokenizer(LLAMA3_SPLIT)
    model = tiny_model("llama", tokenizer, seed=3)
    folder = save(tmp_path / "m", model, tokenizer)
    result = convert_to_gguf(folder, tmp_path / f"m-{outtype}.gguf", outtype=outtype)
    reader = gguf.GGUFReader(result.output_path)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    assert int(reader.fields["general.file_type"].contents()) == file_type
    # 2-D weights in the asked type, norms in F32 (2 per layer and the final one).
    assert result.tensor_types == {weights: 2 * 7 + 2, "F32": 5}
    assert {t.tensor_type.name for t in reader.tensors if len(t.shape) == 1} == {"F32"}
    assert result.bits_per_weight is not None and result.bits_per_weight < 32
    llm = load(Path(result.output_path or ""))
    try:
        ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
        ours, theirs = llama_cpp_logits(llm, ids), hf_logits(model, ids)
        assert 0 < abs(ours - theirs).max() < tolerance
        assert ours[-1].argmax() == theirs[-1].argmax()
    finally:
        llm.close()


def _tensors(path: str | None) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


def _field(path: str | None, key: str) -> Any:
    return gguf.GGUFReader(path).fields[key].contents()


def test_a_model_object_and_tokenizer_export_like_their_folder(tmp_path: Path) -> None:
    tokenizer = spm_style_tokenizer()
    model = tiny_model("mistral", tokenizer, seed=5)
    folder = save(tmp_path / "saved", model, tokenizer)
    from_folder = convert_to_gguf(folder, tmp_path / "folder.gguf", outtype="f16")
    from_object = convert_to_gguf(model, tmp_path / "object.gguf", outtype="f16", tokenizer=tokenizer)
    assert _tensors(from_object.output_path) == _tensors(from_folder.output_path)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.chat_template", "tokenizer.ggml.bos_token_id", "llama.rope.freq_base"):
        assert _field(from_object.output_path, key) == _field(from_folder.output_path, key), key
    # An object without a tokenizer (and no folder to find one in) is refused with what to pass.
    with pytest.raises(UnsupportedTokenizerError, match="tokenizer="):
        convert_to_gguf(tiny_model("llama", tokenizer), tmp_path / "none.gguf")


def test_the_export_is_a_traced_stage_with_its_artifacts(tmp_path: Path) -> None:
    tokenizer = byte_level_tokenizer()
    folder = save(tmp_path / "tiny-gpt2-vocab", tiny_model("llama", tokenizer), tokenizer)
    ctx = PipelineContext()
    with InMemoryTelemetry() as telemetry:
        result = find_stage("export", "gguf").load()(folder, tmp_path / "out" / "tiny.gguf", outtype="q8_0", ctx=ctx)
        span = telemetry.span("llamatelemetry.pipeline.export_gguf")
        durations = telemetry.metric_points(names.METRIC_STAGE_DURATION)
    attributes = dict(span.attributes or {})
    output = str((tmp_path / "out" / "tiny.gguf").resolve())
    assert attributes[names.STAGE] == "export_gguf"
    assert attributes[names.QUANTIZATION_METHOD] == "gguf_export" and attributes[names.QUANTIZATION_TYPE] == "Q8_0"
    assert attributes[names.QUANTIZATION_ENGINE] == "llamatelemetry"
    assert attributes[names.QUANTIZATION_TENSORS] == 21
    assert sorted(attributes[names.QUANTIZATION_TENSOR_TYPES]) == ["F32=5", "Q8_0=16"]
    assert 8 < attributes[names.QUANTIZATION_BITS_PER_WEIGHT] < 9
    assert attributes["llamatelemetry.gguf.architecture"] == "llama"
    assert attributes["llamatelemetry.gguf.tokenizer"] == "gpt2"
    assert attributes["llamatelemetry.gguf.tokenizer.pre"] == "gpt-2"
    assert attributes[names.QUANTIZATION_DURATION] > 0
    assert list(attributes[names.OUTPUT_ARTIFACTS]) == [output] == [result.output_path]
    assert attributes[names.QUANTIZATION_SIZE_AFTER] == Path(output).stat().st_size == result.size_after_bytes
    assert durations[0].attributes == {names.STAGE: "export_gguf", names.OUTCOME: "ok"}
    saved = ArtifactManifest.load(ctx.manifest.save(tmp_path / "manifest.json"))
    roles = {Path(a.path).name: (a.kind, a.metadata["role"]) for a in saved.artifacts}
    assert roles == {"config.json": ("model_config", "input"), "model.safetensors": ("model_weights", "input"),
                     "tokenizer.json": ("tokenizer", "input"), "tokenizer_config.json": ("tokenizer", "input"),
                     "chat_template.jinja": ("tokenizer", "input"), "tiny.gguf": ("gguf_model", "output")}
    assert saved.verify().ok and all(len(a.sha256) == 64 for a in saved.artifacts)
    assert ctx.output_artifact == output and ctx.base_model == "tiny-gpt2-vocab"


def test_an_unknown_architecture_is_an_error_span_naming_it(tmp_path: Path) -> None:
    tokenizer = byte_level_tokenizer()
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=1, n_head=2)
    folder = save(tmp_path / "gpt2", transformers.GPT2LMHeadModel(config), tokenizer)
    with InMemoryTelemetry() as telemetry, pytest.raises(UnsupportedArchitectureError) as raised:
        convert_to_gguf(folder, tmp_path / "gpt2.gguf")
    message = str(raised.value)
    assert "GPT2LMHeadModel" in message and "LLAMATELEMETRY_GGUF_CONVERTER" in message and "converter=" in message
    span = telemetry.span("llamatelemetry.pipeline.export_gguf")
    assert str(span.status.status_code) == "StatusCode.ERROR"
    assert (span.attributes or {})["error.type"].endswith("UnsupportedArchitectureError")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"], "nothing written"
    # The folders an export makes for its output are removed when it fails, as its file is.
    with pytest.raises(UnsupportedArchitectureError):
        convert_to_gguf(folder, tmp_path / "new" / "deeper" / "gpt2.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"], "no empty folders left behind"


def test_a_failed_write_leaves_no_half_written_file(tmp_path: Path) -> None:
    tokenizer = byte_level_tokenizer()
    folder = save(tmp_path / "m", tiny_model("llama", tokenizer), tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    # A real write failure: the file-size limit (as a full disk would) stops the write half-way.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with InMemoryTelemetry() as telemetry, pytest.raises(GGUFWriteError) as raised:
            convert_to_gguf(folder, out / "m.gguf", outtype="f32")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert list(out.iterdir()) == []
    assert str(telemetry.span("llamatelemetry.pipeline.export_gguf").status.status_code) == "StatusCode.ERROR"
    # An OSError with the errno, saying which file and what to do.
    # gguf's writer reports a short write without an errno: the error still names the file and what to check.
    assert isinstance(raised.value, OSError) and raised.value.errno in (errno.EFBIG, errno.EIO)
    assert str((out / "m.gguf").resolve()) in str(raised.value) and "ulimit -f" in str(raised.value)


def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_to_gguf(tmp_path / "missing", tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="Q4_K_M"):
        convert_to_gguf(tmp_path, tmp_path / "x.gguf", outtype="q4_k_m")
    # A WordPiece tokenizer is neither style our writer knows.
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    wordpiece.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]"],
                                                                     show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
    folder = save(tmp_path / "wp", tiny_model("llama", fast), fast)
    with pytest.raises(UnsupportedTokenizerError, match="WordPiece"):
        convert_to_gguf(folder, tmp_path / "wp.gguf")
    assert not (tmp_path / "wp.gguf").exists()
    with pytest.raises(GGUFExportError, match=r"no convert_hf_to_gguf\.py"):
        convert_to_gguf(folder, tmp_path / "wp.gguf", converter=tmp_path / "nowhere")


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
], ids=["llama3", "linear"])
def test_rope_scaling_and_a_wide_head_are_faithful(rope: dict[str, Any], tmp_path: Path) -> None:
    tokenizer = byte_level_tokenizer(LLAMA3_SPLIT)
    ids = tokenizer(PROMPT * 3, add_special_tokens=False)["input_ids"]

    def build(parameters: dict[str, Any]) -> Any:
        config = transformers.LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=256,
            rope_parameters=parameters)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12)
            return transformers.LlamaForCausalLM(config).eval()

    model = build(rope)
    plain = hf_logits(build({"rope_type": "default", "rope_theta": rope["rope_theta"]}), ids)
    theirs = hf_logits(model, ids)
    assert abs(theirs - plain).max() > 1e-2, "the scaling changes the logits, so the comparison below can fail"
    result = convert_to_gguf(save(tmp_path / "m", model, tokenizer), tmp_path / "m.gguf", outtype="f32")
    llm = load(Path(result.output_path or ""))
    try:
        assert_faithful(llama_cpp_logits(llm, ids), theirs)
    finally:
        llm.close()


def test_without_the_gguf_package_the_install_command_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match=r'pip install "llamatelemetry-transformers\[gguf\]"') as raised:
        convert_to_gguf(tmp_path, tmp_path / "x.gguf")
    assert isinstance(raised.value, GGUFExportError) and raised.value.name == "gguf"


def test_a_llama_cpp_server_uses_the_exported_chat_template(tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp", reason='pip install "llamatelemetry-llamacpp[server]"')
    httpx = pytest.importorskip("httpx")
    from llamatelemetry_llamacpp.testing import running_server

    tokenizer = byte_level_tokenizer(LLAMA3_SPLIT)
    folder = save(tmp_path / "m", tiny_model("llama", tokenizer), tokenizer)
    result = convert_to_gguf(folder, tmp_path / "m-f16.gguf", outtype="f16")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café? 🙂"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with running_server(result.output_path, ctx_size=256, n_parallel=1, threads=1,
                        log_dir=tmp_path / "logs") as server:
        props = httpx.get(f"{server.base_url}/props", timeout=30).json()
        applied = httpx.post(f"{server.base_url}/apply-template", json={"messages": messages}, timeout=30).json()
    assert props["chat_template"] == CHAT_TEMPLATE
    assert applied["prompt"] == expected
