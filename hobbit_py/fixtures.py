"""Tiny random-weight MoE models in GGUF, for tests and as a stand-in default model.

The tokenizer is a real GPT-2 byte-level BPE cut down to its first merges (from the vocab-only
GGUF that ships in the pinned llama.cpp tree), so text round-trips and prompts tokenize as
they would with the full vocabulary.

    python -m hobbit_py.fixtures OUT.gguf --arch mixtral
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hobbit_py._lib import REPO_ROOT

GPT2_VOCAB = REPO_ROOT / "vendor" / "llama.cpp" / "models" / "ggml-vocab-gpt-2.gguf"
ARCHES = {"mixtral": "llama", "qwen3moe": "qwen3moe"}


@dataclass(frozen=True)
class FixtureShape:
    """Shape of a generated model; widths are multiples of 256 so K-quants apply."""

    n_layer: int = 2
    n_embd: int = 256
    n_ff_exp: int = 256
    n_expert: int = 8
    n_expert_used: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_vocab: int = 2048
    n_ctx: int = 2048


def _gpt2_tokenizer(n_vocab: int) -> tuple[list[str], list[str], int]:
    """First `n_vocab - 1` GPT-2 tokens, the merges that build them, and <|endoftext|>."""
    import gguf  # noqa: PLC0415

    if not GPT2_VOCAB.exists():
        raise FileNotFoundError(f"{GPT2_VOCAB} missing; run 'make vendor'")
    reader = gguf.GGUFReader(GPT2_VOCAB)
    tokens_field = reader.fields["tokenizer.ggml.tokens"]
    merges_field = reader.fields["tokenizer.ggml.merges"]
    all_tokens = [bytes(tokens_field.parts[i]).decode() for i in tokens_field.data]
    all_merges = [bytes(merges_field.parts[i]).decode() for i in merges_field.data]
    tokens = all_tokens[: n_vocab - 1]
    known = set(tokens)
    merges = [m for m in all_merges if m.replace(" ", "", 1) in known]
    tokens.append("<|endoftext|>")
    return tokens, merges, len(tokens) - 1


def _matrix(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random weights scaled by fan-in (the last numpy axis is ggml's first)."""
    return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float16)


def _add_experts(w, name: str, data: np.ndarray, expert_types: tuple[str, ...]) -> None:  # noqa: ANN001
    """Add a routed expert tensor once per level, in the multi-precision GGUF layout:
    level 0 under the standard name, level i under `blk.N.ffn_X_exps.<type>.weight`."""
    import gguf  # noqa: PLC0415

    if not expert_types:
        w.add_tensor(name, data)
        return
    base = name.removesuffix(".weight")
    for i, type_name in enumerate(expert_types):
        qtype = gguf.GGMLQuantizationType[type_name.upper()]
        level_name = name if i == 0 else f"{base}.{type_name}.weight"
        if qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(level_name, data.astype(np.float16))
        else:
            w.add_tensor(level_name, gguf.quants.quantize(data.astype(np.float32), qtype),
                         raw_dtype=qtype)


def write_fixture(path: Path, arch: str = "mixtral", shape: FixtureShape = FixtureShape(),
                  seed: int = 0, expert_types: tuple[str, ...] = (),
                  chat_template: str | None = None, eot_token: int | None = None) -> Path:
    """Write a random-weight MoE model of `arch` ("mixtral" or "qwen3moe") to `path`.

    `expert_types` (e.g. ("q8_0", "q4_0"), highest precision first) stores every routed
    expert once per type as a multi-precision GGUF; empty keeps them F16 in a plain GGUF.
    Types are limited to what gguf-py quantises in numpy (f16, q8_0, q4_0, ...).
    `chat_template` (Jinja, as in HF tokenizer configs) is stored as tokenizer.chat_template;
    `eot_token` marks a token id as end-of-turn (an end-of-generation token besides EOS).
    """
    import gguf  # noqa: PLC0415

    if arch not in ARCHES:
        raise ValueError(f"unknown fixture arch {arch!r}; choose from {sorted(ARCHES)}")
    s = shape
    rng = np.random.default_rng(seed)
    head_dim = s.n_embd // s.n_head
    gguf_arch = ARCHES[arch]
    w = gguf.GGUFWriter(str(path), gguf_arch)
    w.add_name(f"hobbit-fixture-{arch}")
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff_exp)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(s.n_expert)
    w.add_expert_used_count(s.n_expert_used)
    if arch == "qwen3moe":
        w.add_expert_feed_forward_length(s.n_ff_exp)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if expert_types:
        w.add_uint32("hobbit.format_version", 1)
        w.add_array("hobbit.expert_types", list(expert_types))

    tokens, merges, eos = _gpt2_tokenizer(s.n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    w.add_token_merges(merges)
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    if eot_token is not None:
        w.add_eot_token_id(eot_token)

    ones = np.ones(s.n_embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", _matrix(rng, s.n_vocab, s.n_embd))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", _matrix(rng, s.n_vocab, s.n_embd))
    kv = s.n_head_kv * head_dim
    for i in range(s.n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", _matrix(rng, s.n_embd, s.n_embd))
        w.add_tensor(p + "attn_k.weight", _matrix(rng, kv, s.n_embd))
        w.add_tensor(p + "attn_v.weight", _matrix(rng, kv, s.n_embd))
        w.add_tensor(p + "attn_output.weight", _matrix(rng, s.n_embd, s.n_embd))
        if arch == "qwen3moe":
            w.add_tensor(p + "attn_q_norm.weight", np.ones(head_dim, dtype=np.float32))
            w.add_tensor(p + "attn_k_norm.weight", np.ones(head_dim, dtype=np.float32))
        w.add_tensor(p + "ffn_norm.weight", ones)
        # the router gets a larger scale so gating weights are spread, as in trained models
        router = rng.standard_normal((s.n_expert, s.n_embd)).astype(np.float32)
        w.add_tensor(p + "ffn_gate_inp.weight", router)
        for proj, rows, cols in (("gate", s.n_ff_exp, s.n_embd), ("up", s.n_ff_exp, s.n_embd),
                                 ("down", s.n_embd, s.n_ff_exp)):
            _add_experts(w, f"{p}ffn_{proj}_exps.weight", _matrix(rng, s.n_expert, rows, cols),
                         expert_types)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", choices=sorted(ARCHES), default="mixtral")
    parser.add_argument("--layers", type=int, default=FixtureShape.n_layer)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expert-types", default="",
                        help="comma-separated levels, highest first (e.g. q8_0,q4_0)")
    args = parser.parse_args()
    types = tuple(t for t in args.expert_types.split(",") if t)
    write_fixture(args.out, args.arch, FixtureShape(n_layer=args.layers), args.seed, types)
    print(args.out)


if __name__ == "__main__":
    main()
