"""Unit tests of the converter's pieces: --bits parsing, fallbacks, tensor rules, pre-tokenizers."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hf_fixtures as F  # noqa: E402

from hobbit_convert import ggml, plan, pretok, qtypes  # noqa: E402
from tests.conftest import require  # noqa: E402
from hobbit_py._lib import HobbitError  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _ggml_lib() -> Iterator[None]:
    """The stock ggml while the patched build is missing, for this module only."""
    with pytest.MonkeyPatch.context() as mp:
        lib = F.lib_env().get("HOBBIT_LIB_DIR")
        if lib and lib != os.environ.get("HOBBIT_LIB_DIR"):
            mp.setenv("HOBBIT_LIB_DIR", lib)
        ggml.load.cache_clear()
        yield
    ggml.load.cache_clear()


@pytest.fixture(scope="module")
def g() -> ggml.Ggml:
    try:
        return ggml.load()
    except HobbitError as e:
        require(False, f"libggml-base of the build ({e})")
        raise


def test_bits_order_and_widths(g: ggml.Ggml) -> None:
    types, notes = qtypes.parse_bits(g, "4, 8")
    assert [t.name for t in types] == ["q8_0", "q4_k"]
    assert notes == ["4 bits -> q4_k", "8 bits -> q8_0"]
    types, _ = qtypes.parse_bits(g, "2,3,5,6,16")
    assert [t.name for t in types] == ["f16", "q6_k", "q5_k", "q3_k", "q2_k"]
    types, notes = qtypes.parse_bits(g, "Q4_K,iq4_xs,q5_0,bf16")
    assert [t.name for t in types] == ["bf16", "q5_0", "q4_k", "iq4_xs"] and notes == []


@pytest.mark.parametrize("spec, match", [
    ("", "empty entry"), ("8,", "empty entry"), ("1", "no type for 1 bits"), ("q3", "unknown entry"),
    ("iq1_s", "importance matrix"), ("iq2_xs", "importance matrix"), ("iq3_xxs", "importance matrix"),
    ("q8_k", "cannot quantise"), ("i32", "cannot quantise"), ("q4_k,4", "listed twice"),
    ("q4_k,iq4_nl", "same size"),
    ("q4_k,iq4_xs", None),
])
def test_bits_errors(g: ggml.Ggml, spec: str, match: str | None) -> None:
    if match is None:  # iq4_xs (4.25 bpw) and q4_k (4.5) are both fine
        qtypes.parse_bits(g, spec)
        return
    with pytest.raises(HobbitError, match=match):
        qtypes.parse_bits(g, spec)


@pytest.mark.parametrize("want, ncols, got", [
    ("q4_k", 256, "q4_k"), ("q4_k", 128, "q5_0"), ("q5_k", 128, "q5_1"), ("q6_k", 128, "q8_0"),
    ("q2_k", 96, "q4_0"), ("q3_k", 64, "q4_0"), ("iq4_xs", 128, "iq4_nl"), ("q8_0", 48, "f16"),
    ("q4_k", 48, "f16"), ("q4_0", 32, "q4_0"), ("f16", 7, "f16"),
])
def test_fallback_like_llama_quantize(g: ggml.Ggml, want: str, ncols: int, got: str) -> None:
    assert qtypes.fit(g, qtypes.qtype(g, want), ncols).name == got


def test_tensor_rules(g: ggml.Ggml) -> None:
    q4, q8 = qtypes.qtype(g, "q4_k"), qtypes.qtype(g, "q8_0")
    f32 = qtypes.qtype(g, "f32")

    def t(name: str, shape: tuple[int, ...], base: qtypes.QType = q4, tied: bool = False) -> str:
        return plan.plan_tensor(g, name, shape, f32.id, [q8, q4], base, "qwen2moe", tied).outs[0][2].name

    assert t("blk.0.attn_q.weight", (256, 256)) == "q4_k"
    assert t("blk.0.attn_k.weight", (128, 256)) == "q5_0"       # fallback
    assert t("blk.0.attn_norm.weight", (256,)) == "f32"          # norms stay
    assert t("blk.0.ffn_gate_inp.weight", (256, 8)) == "f32"     # router stays
    assert t("blk.0.ffn_gate_inp_shexp.weight", (256, 1)) == "f32"  # 1-D in ggml terms
    assert t("blk.0.ffn_up_shexp.weight", (256, 512)) == "q4_k"  # shared expert: non-expert
    assert t("output.weight", (256, 320)) == "q6_k"
    assert t("output.weight", (256, 320), base=q8) == "q8_0"
    assert t("token_embd.weight", (256, 320)) == "q4_k"
    assert t("token_embd.weight", (256, 320), tied=True) == "q6_k"
    p = plan.plan_tensor(g, "blk.3.ffn_down_exps.weight", (128, 256, 8), f32.id, [q8, q4], q8, "x", False)
    assert p.expert and [(n, r.name, w.name) for n, r, w in p.outs] == [
        ("blk.3.ffn_down_exps.weight", "q8_0", "q8_0"), ("blk.3.ffn_down_exps.q4_k.weight", "q4_k", "q5_0")]
    assert plan.is_routed_expert("blk.0.ffn_gate_up_exps.weight", 3)
    assert not plan.is_routed_expert("blk.0.ffn_gate_exps.bias", 2)
    assert not plan.is_routed_expert("blk.0.ffn_gate_shexp.weight", 2)


def _tok_json(tmp_path: Path, pre: object) -> Path:
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps({"model": {"type": "BPE"}, "pre_tokenizer": pre}))
    return p


LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")


@pytest.mark.parametrize("pre, name", [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}, "qwen2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "default"),
    ({"type": "Split", "pattern": {"Regex": r"\w+"}, "behavior": "Isolated"}, "default"),
    (None, "default"),
])
def test_pretokenizer_detection(tmp_path: Path, pre: object, name: str) -> None:
    got, why = pretok.detect(_tok_json(tmp_path, pre))
    assert got == name and why


def test_fixture_tokenizer_is_unknown_to_the_converter(tmp_path: Path) -> None:
    """Our fixtures exercise the fallback: their tokenizer is byte-level BPE, detected as gpt-2."""
    F.make_tokenizer(tmp_path)
    assert pretok.detect(tmp_path / "tokenizer.json")[0] == "gpt-2"


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


@pytest.mark.parametrize("exc, match", [
    (OSError(errno.ENOSPC, "No space left on device"), "output location is full"),
    (KeyboardInterrupt(), None),
])
def test_failure_mid_write_leaves_nothing(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          exc: BaseException, match: str | None) -> None:
    from hobbit_convert import convert, write

    src = F.intermediate(base, "mixtral")
    calls = {"n": 0}
    real = write._pwrite_all

    def flaky(fd: int, buf: memoryview, pos: int) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise exc
        real(fd, buf, pos)

    monkeypatch.setattr(write, "_pwrite_all", flaky)
    out = tmp_path / "o.gguf"
    with pytest.raises(HobbitError if match else KeyboardInterrupt, match=match):
        convert.convert(str(src), "8,4", out)
    assert list(tmp_path.iterdir()) == []


def test_library_api_report(base: Path, tmp_path: Path) -> None:
    from hobbit_convert import convert

    r = convert.convert(str(F.intermediate(base, "olmoe")), "8,4", tmp_path / "o.gguf", threads=2)
    assert [t.name for t in r.levels] == ["q8_0", "q4_k"]
    assert r.file_bytes == (tmp_path / "o.gguf").stat().st_size
    assert r.level_bytes[0] > r.level_bytes[1] > 0 and r.resident_bytes > 0
    assert any("ffn_down_exps" in f and "q5_0" in f for f in r.fallbacks)
    assert oct((tmp_path / "o.gguf").stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's 0600
