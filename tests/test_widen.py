"""training.widen: zero-padding the expert FFN width keeps logits, routing and greedy tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import require, require_module

torch = require_module("torch")
transformers = require_module("transformers")
from safetensors import safe_open  # noqa: E402

from training.widen import main as widen_main  # noqa: E402
from training.widen import widen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "models" / "hobbit-mixtral-tiny"


def _tiny_mixtral(path: Path) -> Path:
    cfg = transformers.MixtralConfig(
        vocab_size=320, hidden_size=64, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=128,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(cfg)
    with torch.no_grad():  # HF init leaves small outputs; make routing and logits decisive
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(4.0)
    model.to(torch.bfloat16).save_pretrained(str(path), max_shard_size="200KB")
    return path


def _load(path: Path):
    m = transformers.MixtralForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    m.set_experts_implementation("eager")
    return m


def _compare(src: Path, dst: Path, vocab: int, steps: int = 12) -> None:
    a, b = _load(src), _load(dst)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (1, n), generator=g) for n in (5, 17, 33)]
    for x in prompts:
        with torch.no_grad():
            oa = a(input_ids=x, output_router_logits=True)
            ob = b(input_ids=x, output_router_logits=True)
        torch.testing.assert_close(ob.logits, oa.logits, atol=1e-4, rtol=1e-4)
        for ra, rb in zip(oa.router_logits, ob.router_logits, strict=True):
            torch.testing.assert_close(rb, ra, atol=1e-5, rtol=1e-5)
        ga = a.generate(x, max_new_tokens=steps, do_sample=False, pad_token_id=0)
        gb = b.generate(x, max_new_tokens=steps, do_sample=False, pad_token_id=0)
        assert torch.equal(ga, gb)


def test_widen_tiny_random_mixtral(tmp_path: Path) -> None:
    src = _tiny_mixtral(tmp_path / "src")
    info = widen(src, tmp_path / "wide", factor=3, max_shard_bytes=300_000)
    assert (info["old"], info["new"]) == (48, 144)
    assert info["tensors"] == 3 * 8 * 3  # w1, w2, w3 of 8 experts in 3 layers
    cfg = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert cfg["intermediate_size"] == 144 and cfg["hidden_size"] == 64
    index = json.loads((tmp_path / "wide" / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.1.block_sparse_moe.experts.5.w2.weight"]
    with safe_open(str(tmp_path / "wide" / shard), "pt") as f:
        w2 = f.get_tensor("model.layers.1.block_sparse_moe.experts.5.w2.weight")
    assert w2.shape == (64, 144) and w2.dtype == torch.bfloat16 and not w2[:, 48:].any()
    _compare(src, tmp_path / "wide", 320)


def test_widen_cli_expert_ffn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _tiny_mixtral(tmp_path / "src")
    monkeypatch.setattr("sys.argv", ["widen", str(src), str(tmp_path / "wide"), "--expert-ffn", "256"])
    widen_main()
    assert json.loads((tmp_path / "wide" / "config.json").read_text())["intermediate_size"] == 256
    assert (tmp_path / "wide" / "model.safetensors").exists()  # fits one shard under the 2GB default
    _compare(src, tmp_path / "wide", 320, steps=6)


def test_widen_rejects_bad_arguments(tmp_path: Path) -> None:
    src = _tiny_mixtral(tmp_path / "src")
    with pytest.raises(ValueError):
        widen(src, tmp_path / "w", factor=2, expert_ffn=128)
    with pytest.raises(ValueError):
        widen(src, tmp_path / "w", expert_ffn=16)


def test_widen_trained_model(tmp_path: Path) -> None:
    require((TRAINED / "config.json").exists(), f"the trained model in {TRAINED}")
    widen(TRAINED, tmp_path / "wide", factor=2, max_shard_bytes=15 * 10**6)
    assert json.loads((tmp_path / "wide" / "config.json").read_text())["intermediate_size"] == 512
    assert (tmp_path / "wide" / "tokenizer.json").exists()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "wide"))
    a, b = _load(TRAINED), _load(tmp_path / "wide")
    for text in ("The Python interpreter", "PostgreSQL uses a", "To create a new branch,"):
        x = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            torch.testing.assert_close(b(input_ids=x).logits, a(input_ids=x).logits, atol=1e-4, rtol=1e-4)
        ga = a.generate(x, max_new_tokens=16, do_sample=False)
        gb = b.generate(x, max_new_tokens=16, do_sample=False)
        assert torch.equal(ga, gb), (tok.decode(ga[0]), tok.decode(gb[0]))
