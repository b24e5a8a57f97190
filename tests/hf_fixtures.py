"""Tiny random MoE checkpoints in real Hugging Face format, made with `transformers`.

Each one is small (hidden 256, two or three layers, four to eight experts) and carries a
custom byte-level BPE tokenizer trained on a few sentences, so the converter's path for
tokenizers that convert_hf_to_gguf.py does not recognise is exercised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Mixture-of-experts models route every token to a few experts.",
    "HOBBIT loads a low precision copy when an expert matters little.",
    "Once upon a time there was a small model that wanted to be large.",
    "Numbers like 3, 33 and 333 are split into digits; punctuation too!",
    "The cache keeps hot experts in fast memory and the rest on disk.",
]
PROMPT = "Once upon a time the quick brown fox"
VOCAB = 320  # 256 byte symbols + merges + specials


def make_tokenizer(out: Path) -> int:
    """Train a byte-level BPE on TEXT and save tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT * 4, trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>",
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 512,
    }, indent=1))
    return tok.get_vocab_size()


def _common(vocab: int) -> dict[str, Any]:
    return dict(vocab_size=vocab, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                tie_word_embeddings=False)


def _mixtral(vocab: int) -> Any:
    from transformers import MixtralConfig, MixtralForCausalLM
    cfg = MixtralConfig(**_common(vocab), intermediate_size=256, num_hidden_layers=2,
                        num_local_experts=4, num_experts_per_tok=2)
    return MixtralForCausalLM(cfg)


def _qwen2_moe(vocab: int) -> Any:
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
    cfg = Qwen2MoeConfig(**_common(vocab), intermediate_size=256, moe_intermediate_size=128,
                         shared_expert_intermediate_size=256, num_hidden_layers=2, num_experts=8,
                         num_experts_per_tok=2, decoder_sparse_step=1, norm_topk_prob=False)
    return Qwen2MoeForCausalLM(cfg)


def _qwen3_moe(vocab: int) -> Any:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    cfg = Qwen3MoeConfig(**_common(vocab), intermediate_size=256, moe_intermediate_size=256,
                         head_dim=64, num_hidden_layers=2, num_experts=8, num_experts_per_tok=2,
                         decoder_sparse_step=1, norm_topk_prob=True)
    return Qwen3MoeForCausalLM(cfg)


def _olmoe(vocab: int) -> Any:
    from transformers import OlmoeConfig, OlmoeForCausalLM
    c = _common(vocab)
    c["num_key_value_heads"] = 4
    cfg = OlmoeConfig(**c, intermediate_size=128, num_hidden_layers=2, num_experts=8,
                      num_experts_per_tok=2)
    return OlmoeForCausalLM(cfg)


def _deepseek_v2(vocab: int) -> Any:
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
    c = _common(vocab)
    c["num_key_value_heads"] = 4
    cfg = DeepseekV2Config(**c, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=3,
                           n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                           first_k_dense_replace=1, kv_lora_rank=64, q_lora_rank=128,
                           qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=64, n_group=1,
                           topk_group=1, topk_method="greedy", norm_topk_prob=False,
                           routed_scaling_factor=1.0)
    return DeepseekV2ForCausalLM(cfg)


def _gpt_oss(vocab: int) -> Any:
    from transformers import GptOssConfig, GptOssForCausalLM
    c = _common(vocab)
    cfg = GptOssConfig(**c, intermediate_size=256, head_dim=64, num_hidden_layers=2,
                       num_local_experts=4, num_experts_per_tok=2, sliding_window=128,
                       layer_types=["sliding_attention", "full_attention"])
    return GptOssForCausalLM(cfg)


def _qwen2_dense(vocab: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    # transformers picks Qwen2Tokenizer for model_type qwen2, which adds <|endoftext|>
    cfg = Qwen2Config(**_common(vocab + 64), intermediate_size=256, num_hidden_layers=2)
    return Qwen2ForCausalLM(cfg)


BUILDERS: dict[str, Callable[[int], Any]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "olmoe": _olmoe,
    "deepseek_v2": _deepseek_v2,
    "gpt_oss": _gpt_oss,
    "qwen2_dense": _qwen2_dense,
}

#: architecture -> (llama.cpp arch in GGUF, save dtype)
EXPECTED: dict[str, tuple[str, str]] = {
    "mixtral": ("llama", "float32"),
    "qwen2_moe": ("qwen2moe", "bfloat16"),
    "qwen3_moe": ("qwen3moe", "float32"),
    "olmoe": ("olmoe", "float16"),
    "deepseek_v2": ("deepseek2", "float32"),
    "gpt_oss": ("gpt-oss", "bfloat16"),
    "qwen2_dense": ("qwen2", "float32"),
}


def make_checkpoint(kind: str, out: Path, seed: int = 0, shards: bool = False) -> Path:
    """Write a random `kind` checkpoint (config, safetensors, tokenizer) into `out`."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(out)
    torch.manual_seed(seed)
    model = BUILDERS[kind](vocab)
    with torch.no_grad():  # larger weights than the init's std 0.02, so routing is not flat
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    dtype = getattr(torch, EXPECTED[kind][1])
    model = model.to(dtype)
    model.save_pretrained(out, max_shard_size="200KB" if shards else "10GB")
    return out


# ---------------------------------------------------------------------------------------
# helpers shared by the converter tests (cached per test session)
# ---------------------------------------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STOCK_BIN = REPO / "build-stock" / "bin"
PATCHED_BIN = REPO / "build" / "bin"
ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "gpt_oss"]

_cache: dict[tuple[Any, ...], Path] = {}


def lib_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the CLI: the patched ggml if built, else the stock build of the same tree."""
    env = dict(os.environ)
    if "HOBBIT_LIB_DIR" not in env and not (PATCHED_BIN / "libggml-base.so").exists():
        env["HOBBIT_LIB_DIR"] = str(STOCK_BIN)
    env.pop("HOBBIT_DEBUG", None)
    env.update(extra or {})
    return env


def cli_module() -> str:
    """`hobbit_py.cli` once it exists; the converter's own stand-alone app until then."""
    import importlib.util
    try:
        if importlib.util.find_spec("hobbit_py.cli") is not None:
            return "hobbit_py.cli"
    except ImportError:
        pass
    return "hobbit_convert"


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            preexec_fn: Callable[[], None] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run `hobbit ARGS` in a fresh interpreter; text output."""
    return subprocess.run([sys.executable, "-m", cli_module(), *args], capture_output=True, text=True,
                          env=env or lib_env(), cwd=cwd, preexec_fn=preexec_fn, timeout=timeout)


def checkpoint(base: Path, kind: str, shards: bool = False) -> Path:
    """A cached random checkpoint of `kind` under the session temp dir `base`."""
    key = ("ckpt", kind, shards)
    if key not in _cache:
        _cache[key] = make_checkpoint(kind, base / f"{kind}{'-sharded' if shards else ''}", shards=shards)
    return _cache[key]


def intermediate(base: Path, kind: str) -> Path:
    """The unquantised GGUF our converter makes from `kind` (in-process, cached)."""
    key = ("inter", kind)
    if key not in _cache:
        from hobbit_convert import hf
        ckpt = checkpoint(base, kind)
        outtype = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[EXPECTED[kind][1]]
        out = base / f"{kind}.{outtype}.gguf"
        hf.convert_hf(ckpt, out, outtype, warn=lambda m: None)
        _cache[key] = out
    return _cache[key]


def fuse_gate_up(src: Path, dst: Path) -> Path:
    """Copy of a GGUF with each layer's gate and up experts fused into ffn_gate_up_exps.

    The layout llama.cpp loads (create_tensor_gate_up_exps: {n_embd, 2*n_ff, n_expert}, gate
    rows first), as convert_hf_to_gguf.py --fuse-gate-up-exps writes for the architectures
    whose gguf-py tensor list has it.
    """
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    arch = str(r.get_field("general.architecture").contents())
    w = GGUFWriter(dst, arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    ts = {t.name: t for t in r.tensors}
    for t in r.tensors:
        if ".ffn_up_exps." in t.name:
            continue
        if ".ffn_gate_exps." in t.name:
            up = ts[t.name.replace("ffn_gate_exps", "ffn_up_exps")]
            fused = np.concatenate([np.asarray(t.data), np.asarray(up.data)], axis=1)
            w.add_tensor(t.name.replace("ffn_gate_exps", "ffn_gate_up_exps"), fused,
                         raw_dtype=t.tensor_type)
        else:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def llama_quantize(src: Path, dst: Path, ftype: str, *extra: str) -> Path:
    """Stock llama-quantize of the same pinned tree."""
    exe = STOCK_BIN / "llama-quantize"
    r = subprocess.run([str(exe), *extra, str(src), str(dst), ftype, "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return dst


_GREEDY = r"""
import json, sys
import numpy as np
import llama_cpp
m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_threads=2, n_batch=64, verbose=False)
n_vocab = m.n_vocab()
toks = m.tokenize(sys.argv[2].encode(), add_bos=True, special=False)
m.eval(toks)
out, first = [], None
for _ in range(int(sys.argv[3])):
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(m._ctx.ctx, -1), shape=(n_vocab,)).copy()
    first = logits.tolist() if first is None else first
    out.append(int(np.argmax(logits)))
    m.eval([out[-1]])
print(json.dumps({"prompt": toks, "tokens": out, "logits": first}))
"""


def greedy_tokens(bin_dir: Path, model: Path, n: int = 16) -> dict[str, Any] | None:
    """Prompt ids, greedy token ids and first-step logits via llama-cpp-python on `bin_dir`."""
    import importlib.util
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(bin_dir))
    r = subprocess.run([sys.executable, "-c", _GREEDY, str(model), PROMPT, str(n)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
