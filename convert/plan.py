"""Which tensor becomes what: routed experts per level, everything else once.

The rules for non-expert tensors follow llama-quantize of the pinned tree
(`tensor_allows_quantization`, the output-tensor rule of `llama_tensor_get_type_impl` and
`tensor_type_fallback` in src/llama-quant.cpp), so a one-precision HOBBIT file is the file
`llama-quantize --pure` would write, plus llama-quantize's usual Q6_K output tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .ggml import Ggml
from .qtypes import QType, by_id, fit, qtype

#: Routed expert tensors: 3-D, the expert is the outermost dimension.
EXPERT_RE = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down|gate_up)_exps\.weight$")

# substrings of tensor names llama-quantize never quantises (tensor_allows_quantization)
_KEEP_SUBSTR = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd",
    "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook",
    "mm.a.code_embd",
)
_KEEP_EXACT = ("position_embd.weight", "token_types.weight")
_KEEP_GLM5_NEXT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight",
    "ssm_g_b.weight", "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight",
    "attn_v_b.weight",
)


def is_routed_expert(name: str, n_dims: int) -> bool:
    """True for `blk.N.ffn_{gate,up,down,gate_up}_exps.weight` (3-D)."""
    return n_dims == 3 and EXPERT_RE.match(name) is not None


def level_name(name: str, level_type: str) -> str:
    """Name of a lower-precision copy: blk.3.ffn_down_exps.weight -> blk.3.ffn_down_exps.q4_k.weight."""
    assert name.endswith(".weight")
    return f"{name[: -len('.weight')]}.{level_type}.weight"


def ggml_n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims(): trailing dimensions of size 1 do not count ([256, 1] is 1-D)."""
    n = 1
    for i, d in enumerate(shape):
        if d > 1:
            n = i + 1
    return n


def allows_quantization(name: str, n_dims: int, arch: str) -> bool:
    """llama-quantize's tensor_allows_quantization() (without its --only-copy/--leave-output flags)."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if any(s in name for s in _KEEP_SUBSTR) or name in _KEEP_EXACT:
        return False
    if arch == "glm5-next" and any(s in name for s in _KEEP_GLM5_NEXT):
        return False
    return True


def non_expert_type(g: Ggml, name: str, n_dims: int, ncols: int, cur: QType, base: QType,
                    arch: str, tied_embeddings: bool) -> tuple[QType, QType]:
    """(type asked for, type written) for a non-routed tensor, given the base type."""
    if not allows_quantization(name, n_dims, arch):
        return cur, cur
    want = base
    if g.is_quantized(base.id):
        is_output = name == "output.weight" or (tied_embeddings and name == "token_embd.weight")
        if is_output:
            # llama_tensor_get_type_impl: the output tensor gets Q6_K unless the mix is Q8_0
            if arch == "falcon" or ncols % base.blck != 0 or base.name == "mxfp4":
                want = qtype(g, "q8_0")
            elif base.name != "q8_0":
                want = qtype(g, "q6_k")
        return want, fit(g, want, ncols)
    return want, want


@dataclass
class TensorPlan:
    """One source tensor and the tensors it becomes in the output."""

    name: str
    src_type: QType
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first
    expert: bool
    # (output name, requested type, written type) per output tensor, level 0 first
    outs: list[tuple[str, QType, QType]] = field(default_factory=list)

    @property
    def nrows(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n


def plan_tensor(g: Ggml, name: str, shape: tuple[int, ...], src_type: int, levels: list[QType],
                base: QType, arch: str, tied_embeddings: bool) -> TensorPlan:
    """Decide the output tensors of one source tensor."""
    cur = by_id(g, src_type)
    ncols = shape[0]
    if is_routed_expert(name, len(shape)):
        p = TensorPlan(name, cur, shape, True)
        for i, lv in enumerate(levels):
            out = name if i == 0 else level_name(name, lv.name)
            p.outs.append((out, lv, fit(g, lv, ncols)))
        return p
    p = TensorPlan(name, cur, shape, False)
    want, got = non_expert_type(g, name, ggml_n_dims(shape), ncols, cur, base, arch, tied_embeddings)
    p.outs.append((name, want, got))
    return p
