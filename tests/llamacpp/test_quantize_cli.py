"""``llamatelemetry quantize``: what it prints, and a clear error with nothing left behind on bad input."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gguf
import pytest

from llamatelemetry.cli import main
from llamatelemetry_llamacpp.quantize import read_gguf_facts
from llamatelemetry_llamacpp.testing import write_tiny_gguf

pytest.importorskip("llama_cpp")

# Helpers of the sibling module (pytest puts this folder on sys.path).
from test_quantize import byte_level_tokenizer, unknown_architecture_gguf


@pytest.fixture(scope="module")
def tiny256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256-wide tiny llama in F16."""
    return write_tiny_gguf(tmp_path_factory.mktemp("cli256") / "tiny-f16.gguf", n_embd=256, seed=4)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["quantize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_it_prints_what_it_did(tiny256: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.gguf"
    code, printed, _ = _run(capsys, str(tiny256), "-q", "Q4_K_M", "-o", str(out), "--threads", "1")
    assert code == 0
    facts = read_gguf_facts(out)
    assert facts.file_type == "Q4_K_M"
    before, after = tiny256.stat().st_size / 2**20, out.stat().st_size / 2**20
    assert f"-> {out.resolve()} (Q4_K_M, llama.cpp) in " in printed
    assert f"size: {before:,.2f} MiB -> {after:,.2f} MiB ({before / after:.2f}x smaller)" in printed
    assert f"bits per weight: {facts.bits_per_weight:.2f}" in printed
    assert "tensors: F32 5, Q4_K 13, Q6_K 3" in printed and "fallbacks: none" in printed

    narrow = write_tiny_gguf(tmp_path / "narrow.gguf", n_embd=64)
    code, printed, _ = _run(capsys, str(narrow), "-q", "q4_k_m", "--threads", "1")
    assert code == 0 and (tmp_path / "narrow-q4_k_m.gguf").is_file()  # default output: beside the input
    assert "fallbacks: 16 of 21 tensors are stored in another type than Q4_K_M" in printed
    assert "K-quants need 256" in printed and "output.weight" in printed

    code, printed, _ = _run(capsys, "--list-types")
    assert code == 0 and {"Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0"} <= set(printed.split())


def test_bad_input_is_one_clear_error_and_leaves_nothing(tiny256: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.gguf"
    code, printed, err = _run(capsys, str(tmp_path / "no-such-model"), "-q", "Q4_K_M", "-o", str(out))
    assert code == 1 and printed == ""
    assert err.startswith("llamatelemetry quantize: error: Cannot quantize") and "no such file or folder" in err

    code, _, err = _run(capsys, str(tiny256), "-q", "Q4_K_Z", "-o", str(out))
    assert code == 1 and "'Q4_K_Z' is not a GGUF type llama.cpp can produce" in err and "Q4_K_M, Q5_K_S" in err

    code, _, err = _run(capsys, str(unknown_architecture_gguf(tmp_path / "mystery.gguf")), "-q", "Q8_0",
                        "-o", str(out))
    assert code == 1 and "unknown model architecture: 'mysterynet'" in err

    code, _, err = _run(capsys, str(tiny256))
    assert code == 1 and "give -q/--quant-type" in err
    code, _, err = _run(capsys, str(tiny256), "--outtype", "f16")
    assert code == 1 and "--outtype exports a Hugging Face model folder" in err
    assert _files(tmp_path) == ["mystery.gguf"]


def test_a_full_disk_fails_cleanly(tiny256: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The gguf package's writer hits a full device part-way through the tensors.
    def disk_full(self: Any, *args: Any, **kwargs: Any) -> None:
        assert self.fout is not None
        self.fout[0].write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
        code, printed, err = _run(capsys, str(tiny256), "-q", "Q8_0", "-o", str(tmp_path / "q8.gguf"),
                                  "--engine", "gguf-py")
    assert code == 1 and printed == ""
    assert "No space left on device" in err and "the disk is full" in err
    assert _files(tmp_path) == []

    # llama.cpp's own writer in a process that may not write a file past 300 kB (ulimit -f): it fails
    # part-way, as on a full disk, and the command says so and removes what it wrote.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        from llamatelemetry.cli import main
        sys.exit(main(["quantize", {str(tiny256)!r}, "-q", "Q4_K_M", "-o", {str(tmp_path / "q4.gguf")!r},
                       "--threads", "1"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, done.stderr
    assert "llamatelemetry quantize: error: Could not write" in done.stderr
    assert "llama.cpp's file writer failed" in done.stderr and "the disk may be full" in done.stderr
    assert re.search(r"check free space \([\d,]+ MiB free\)", done.stderr)
    assert _files(tmp_path) == []


def test_a_model_folder_exports_and_quantizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("llamatelemetry_transformers", reason="the export stage is the transformers plugin's")
    from llamatelemetry_transformers.testing import build_tiny_model

    torch.set_num_threads(1)
    tokenizer = byte_level_tokenizer()
    llama, gpt2 = tmp_path / "llama", tmp_path / "gpt2"
    for folder, architecture in ((llama, "llama"), (gpt2, "gpt2")):
        build_tiny_model(tokenizer, architecture, hidden_size=256).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    code, printed, _ = _run(capsys, str(llama), "--outtype", "f16", "-o", str(tmp_path / "llama-f16.gguf"))
    assert code == 0 and printed.startswith(f"exported {llama} -> ")
    assert read_gguf_facts(tmp_path / "llama-f16.gguf").file_type == "F16"

    code, printed, _ = _run(capsys, str(llama), "-q", "Q5_K_M", "--threads", "1")
    assert code == 0 and "(Q5_K_M, llama.cpp)" in printed and "fallbacks: none" in printed
    assert read_gguf_facts(tmp_path / "llama-q5_k_m.gguf").file_type == "Q5_K_M"

    code, _, err = _run(capsys, str(gpt2), "-q", "Q4_K_M", "-o", str(tmp_path / "gpt2-q4.gguf"))
    assert code == 1 and "does not know the architecture 'GPT2LMHeadModel'" in err
    assert _files(tmp_path) == ["gpt2", "llama", "llama-f16.gguf", "llama-q5_k_m.gguf"]
