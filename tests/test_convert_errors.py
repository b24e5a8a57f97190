"""Bad input to `hobbit convert`: one clear line on stderr, non-zero exit, nothing left behind."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hf_fixtures as F  # noqa: E402


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


def fails(out_dir: Path, *args: str, match: str, **kw: object) -> str:
    """Run `hobbit convert ARGS`; it must fail with one line containing `match`, leaving no files."""
    before = sorted(p.name for p in out_dir.iterdir())
    r = F.run_cli("convert", *args, **kw)  # type: ignore[arg-type]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("hobbit: error: ") and match in lines[0], lines[0]
    assert sorted(p.name for p in out_dir.iterdir()) == before  # no output, no temp files
    return lines[0]


def test_missing_path(tmp_path: Path) -> None:
    fails(tmp_path, str(tmp_path / "nope"), "--bits", "8", "-o", str(tmp_path / "o.gguf"),
          match="no such file or directory")


def test_dense_model(base: Path, tmp_path: Path) -> None:
    ckpt = F.checkpoint(base, "qwen2_dense")
    fails(tmp_path, str(ckpt), "--bits", "8", "-o", str(tmp_path / "o.gguf"),
          match="not a Mixture-of-Experts model: Qwen2ForCausalLM")


def test_dense_gguf(base: Path, tmp_path: Path) -> None:
    gg = F.intermediate(base, "qwen2_dense")
    fails(tmp_path, str(gg), "--bits", "8", "-o", str(tmp_path / "o.gguf"), match="not a Mixture-of-Experts model")


def test_unsupported_architecture(base: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(F.checkpoint(base, "mixtral"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["HobbitTestMoeForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    out.mkdir()
    fails(out, str(src), "--bits", "8", "-o", str(out / "o.gguf"),
          match="unsupported architecture: HobbitTestMoeForCausalLM")


@pytest.mark.parametrize("bits, match", [
    ("", "empty entry"),
    ("4,,8", "empty entry"),
    ("7", "no type for 7 bits"),
    ("q9_k", "unknown entry 'q9_k'"),
    ("iq2_xxs", "needs an importance matrix"),
    ("8,q8_0", "q8_0 is listed twice"),
])
def test_bad_bits(base: Path, tmp_path: Path, bits: str, match: str) -> None:
    fails(tmp_path, str(F.checkpoint(base, "mixtral")), "--bits", bits, "-o", str(tmp_path / "o.gguf"),
          match=match)


def test_truncated_safetensors(base: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(F.checkpoint(base, "mixtral"), src)
    st = src / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    out = tmp_path / "out"
    out.mkdir()
    fails(out, str(src), "--bits", "8", "-o", str(out / "o.gguf"), match="corrupt or truncated safetensors")


def test_garbage_safetensors(base: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(F.checkpoint(base, "mixtral"), src)
    (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)
    out = tmp_path / "out"
    out.mkdir()
    fails(out, str(src), "--bits", "8", "-o", str(out / "o.gguf"), match="header is not valid JSON")


def test_missing_shard(base: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(F.checkpoint(base, "mixtral", shards=True), src)
    victim = sorted(src.glob("model-*.safetensors"))[-1]
    victim.unlink()
    out = tmp_path / "out"
    out.mkdir()
    fails(out, str(src), "--bits", "8", "-o", str(out / "o.gguf"), match=f"missing weights file {victim.name}")


def test_truncated_gguf(base: Path, tmp_path: Path) -> None:
    src = tmp_path / "cut.gguf"
    data = F.intermediate(base, "mixtral").read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    out.mkdir()
    fails(out, str(src), "--bits", "8", "-o", str(out / "o.gguf"), match="corrupt or truncated GGUF")


def test_garbage_gguf(tmp_path: Path) -> None:
    src = tmp_path / "bad.gguf"
    src.write_bytes(b"GGUF" + b"\xff" * 200)
    out = tmp_path / "out"
    out.mkdir()
    fails(out, str(src), "--bits", "8", "-o", str(out / "o.gguf"), match="corrupt or truncated GGUF")


def test_not_a_model_file(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("hello")
    fails(tmp_path, str(src), "--bits", "8", "-o", str(tmp_path / "o.gguf"), match="not a GGUF file")


def test_output_dir_missing(base: Path, tmp_path: Path) -> None:
    fails(tmp_path, str(F.intermediate(base, "mixtral")), "--bits", "8",
          "-o", str(tmp_path / "no" / "such" / "o.gguf"), match="output directory does not exist")


def test_output_unwritable(base: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes anywhere on a normal filesystem; /proc refuses even root
        target = Path("/proc/hobbit-test.gguf")
        fails(tmp_path, str(F.intermediate(base, "mixtral")), "--bits", "8", "-o", str(target),
              match="cannot write")
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        fails(ro, str(F.intermediate(base, "mixtral")), "--bits", "8", "-o", str(ro / "o.gguf"),
              match="permission denied")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("source", ["gguf", "hf"])
def test_output_full(base: Path, tmp_path: Path, source: str) -> None:
    """A full disk (simulated with RLIMIT_FSIZE: writes fail with EFBIG) is one line, no leftovers."""
    src = F.intermediate(base, "mixtral") if source == "gguf" else F.checkpoint(base, "mixtral")
    limit = 256 * 1024  # far below the output (and the HF intermediate)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    out.mkdir()
    before = sorted(p.name for p in out.iterdir())
    r = F.run_cli("convert", str(src), "--bits", "8,4", "-o", str(out / "o.gguf"), preexec_fn=cap)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("hobbit: error: output location is full"), r.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_existing_output_needs_force(base: Path, tmp_path: Path) -> None:
    src = F.intermediate(base, "mixtral")
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    fails(tmp_path, str(src), "--bits", "8", "-o", str(out), match="exists; pass --force")
    assert out.read_bytes() == b"precious"
    r = F.run_cli("convert", str(src), "--bits", "8", "-o", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]


@pytest.mark.parametrize("bits", ["f16", "bf16", "f32", "q8_0"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_for_every_type(tmp_path: Path, bits: str, bad: float) -> None:
    """F16/BF16/F32 outputs would carry NaN/Inf into a model that then generates nothing."""
    import gguf
    import numpy as np

    from hobbit_py.fixtures import write_fixture

    src = write_fixture(tmp_path / "src.gguf", "mixtral")
    target = "blk.1.ffn_up_exps.weight"
    tensor = next(t for t in gguf.GGUFReader(src).tensors if t.name == target)
    with src.open("r+b") as f:  # one weight deep inside the tensor
        f.seek(int(tensor.data_offset) + int(tensor.n_bytes) // 2)
        f.write(np.array([bad], dtype=np.float16).tobytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    line = fails(out_dir, str(src), "--bits", bits, "-o", str(out_dir / "o.gguf"), match=target)
    assert "NaN or Inf" in line
