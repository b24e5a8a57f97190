"""Evaluate the trained checkpoint with transformers (CPU) and write its model card.

Measures on data/heldout.txt: perplexity (non-overlapping full-context windows, every token
scored; and llama.cpp `llama-perplexity` style: 512-token chunks starting with <s>, second half
scored), bits per byte, the per-layer expert load (top-k selections per expert) with the
dead-expert check (each expert >= 1/4 of the uniform share), a few samples; plots the loss
curve and the load histogram; writes eval.json and README.md into the model folder.

    python -m training.make_card models/hobbit-mixtral-tiny
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, MixtralForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("The Python interpreter", "PostgreSQL uses", "A hacker is", "To create a new branch,",
           "SQLite is a")


@torch.no_grad()
def nll_windows(model: MixtralForCausalLM, ids: list[int], ctx: int, first: int, bos: int | None,
                batch: int = 8) -> tuple[float, int]:
    """Sum of NLL and count over chunks of `ctx` tokens; positions >= `first` are scored."""
    n = len(ids) // ctx if bos is not None else (len(ids) - 1) // ctx
    chunks = []
    for i in range(n):
        c = list(ids[i * ctx:(i + 1) * ctx + (0 if bos is not None else 1)])
        if bos is not None:
            c[0] = bos
        chunks.append(c)
    tot, cnt = 0.0, 0
    for i in range(0, n, batch):
        x = torch.tensor(chunks[i:i + batch])
        inp = x if bos is not None else x[:, :-1]
        logp = torch.log_softmax(model(input_ids=inp).logits.float(), -1)
        tgt = x[:, 1:] if bos is None else x[:, 1:]
        lp = logp[:, : tgt.size(1)].gather(-1, tgt[..., None])[..., 0]
        lp = lp[:, first:] if bos is not None else lp
        tot -= lp.sum().item()
        cnt += lp.numel()
    return tot, cnt


@torch.no_grad()
def expert_load(model: MixtralForCausalLM, ids: list[int], ctx: int) -> np.ndarray:
    """Counts [layers, experts] of top-k selections over non-overlapping windows of the text."""
    cfg = model.config
    counts = np.zeros((cfg.num_hidden_layers, cfg.num_local_experts), dtype=np.int64)
    for i in range(0, len(ids), ctx):
        x = torch.tensor([ids[i:i + ctx]])
        out = model(input_ids=x, output_router_logits=True)
        for layer, logits in enumerate(out.router_logits):
            top = torch.topk(torch.softmax(logits.float(), -1), cfg.num_experts_per_tok, dim=-1).indices
            counts[layer] += np.bincount(top.flatten().numpy(), minlength=cfg.num_local_experts)
    return counts


def plot_loss(log: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, run in enumerate(log["runs"]):
        tr = run["log"]
        c = f"C{i}"
        ax.plot([p["tokens"] / 1e6 for p in tr], [p["loss"] for p in tr], c, alpha=0.45, lw=0.8)
        ev = run["evals"]
        label = f"{run['epochs']:g} epochs, peak LR {run['lr']:g}" + (" (chosen)" if i == log["chosen_run"] else "")
        ax.plot([p["tokens"] / 1e6 for p in ev], [p["val_loss"] for p in ev], c + "o-", ms=3, label=label)
    ch = log["runs"][log["chosen_run"]]
    ax.plot([ch["best_tokens"] / 1e6], [ch["best_val_loss"]], "k*", ms=12, label="saved checkpoint")
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(2.5, 6.5)
    ax.set_title("Training loss (thin) and validation loss (dots) per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_load(share: np.ndarray, floor: float, path: Path) -> None:
    layers, experts = share.shape
    fig, axes = plt.subplots(1, layers, figsize=(2.6 * layers, 3.2), sharey=True)
    for layer, ax in enumerate(np.atleast_1d(axes)):
        ax.bar(range(experts), share[layer] * 100, color="C0")
        ax.axhline(100 / experts, color="k", ls="--", lw=0.8)
        ax.axhline(floor * 100, color="r", ls=":", lw=0.8)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("expert")
        ax.set_xticks(range(experts))
    np.atleast_1d(axes)[0].set_ylabel("% of routes (top-k selections)")
    fig.suptitle("Expert load on held-out text (dashed: uniform share; dotted red: 1/4 of it)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--heldout", type=Path, default=ROOT / "data/heldout.txt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    d: Path = args.model

    tok = AutoTokenizer.from_pretrained(str(d))
    model = MixtralForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    cfg = model.config
    text = args.heldout.read_text()
    ids = tok(text).input_ids  # <s> first
    t0 = time.time()

    tot, cnt = nll_windows(model, ids, cfg.max_position_embeddings, 0, None)
    covered = tok.decode(ids[1: cnt + 1])
    n_bytes = len(covered.encode())
    lc_tot, lc_cnt = nll_windows(model, ids, 512, 256, tok.bos_token_id)
    counts = expert_load(model, ids, cfg.max_position_embeddings)
    share = counts / counts.sum(1, keepdims=True)
    uniform = 1 / cfg.num_local_experts
    floor = uniform / 4

    samples = []
    for j, p in enumerate(PROMPTS):
        x = tok(p, return_tensors="pt").input_ids
        greedy = model.generate(x, max_new_tokens=48, do_sample=False)
        torch.manual_seed(args.seed + j)
        sampled = model.generate(x, max_new_tokens=48, do_sample=True, temperature=0.8, top_k=40)
        samples.append({"prompt": p, "greedy": tok.decode(greedy[0, 1:]),
                        "sampled": tok.decode(sampled[0, 1:])})

    log = json.loads((d / "train_log.json").read_text())
    chosen = log["runs"][log["chosen_run"]]
    n_params = sum(p.numel() for p in model.parameters())
    expert_params = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = n_params - expert_params + expert_params * cfg.num_experts_per_tok // cfg.num_local_experts
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors", ".png", ".md"))
    result = {
        "heldout_file": str(args.heldout.relative_to(ROOT)), "heldout_chars": len(text), "heldout_tokens": len(ids),
        "ppl": math.exp(tot / cnt), "nll": tot / cnt, "scored_tokens": cnt, "window": cfg.max_position_embeddings,
        "bits_per_byte": tot / math.log(2) / n_bytes,
        "ppl_llamacpp_style_ctx512": math.exp(lc_tot / lc_cnt), "llamacpp_style_scored_tokens": lc_cnt,
        "expert_counts": counts.tolist(), "expert_share": share.round(5).tolist(),
        "min_share": float(share.min()), "min_share_over_uniform": float(share.min() / uniform),
        "max_share": float(share.max()), "dead_expert_check_passed": bool(share.min() >= floor),
        "params": n_params, "expert_params": expert_params, "active_params_per_token": active,
        "samples": samples, "eval_seconds_cpu": round(time.time() - t0, 1),
    }
    (d / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_loss(log, d / "loss_curve.png")
    plot_load(share, floor, d / "expert_load.png")
    write_card(d, cfg, log, chosen, result, files)
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "expert_counts", "expert_share")},
                     indent=1))
    if not result["dead_expert_check_passed"]:
        raise SystemExit("an expert gets less than 1/4 of its uniform share: train with a stronger aux loss")


def write_card(d: Path, cfg, log: dict, chosen: dict, r: dict, files: list[Path]) -> None:  # noqa: ANN001
    stats = json.loads((ROOT / "data/corpus_stats.json").read_text())
    src_rows = "\n".join(f"| `{k}` {v['version']} | {v['licence']} | {v['chars'] / 1e6:.2f} M |"
                         for k, v in stats["sources"].items())
    size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    weights = sum(f.stat().st_size for f in d.glob("*.safetensors"))
    share = np.array(r["expert_share"])
    load_rows = "\n".join(f"| {i} | " + " | ".join(f"{x * 100:.1f}" for x in row) + f" | {row.min() * 100:.1f} |"
                          for i, row in enumerate(share))
    runs = "\n".join(f"| {x['epochs']:g} | {x['lr']:g} | {x['tokens'] / 1e6:.1f} M | {x['best_val_loss']:.4f} | "
                     f"{x['best_tokens'] / 1e6:.1f} M | {x['final_val_loss']:.4f} |" for x in log["runs"])
    samples = "\n\n".join(f"**{s['prompt']}**\n\n- greedy: {s['greedy'][len(s['prompt']):]!r}\n"
                          f"- sampled (T=0.8, top-k 40): {s['sampled'][len(s['prompt']):]!r}" for s in r["samples"])
    a = log["args"]
    card = f"""---
license: mit
language: en
library_name: transformers
pipeline_tag: text-generation
tags: [mixtral, moe, tiny, hobbit]
---

# {d.name}

A small Mixtral-style Mixture-of-Experts language model (`MixtralForCausalLM`, {cfg.num_local_experts}
experts, top-{cfg.num_experts_per_tok}) trained from scratch by the HOBBIT project, so that the real
Hugging Face → GGUF conversion path and the expert-offloading runtime run on a model that
actually predicts English text. It is a test and benchmark model: it knows the style and vocabulary
of software documentation and writes fluent-looking but often meaningless sentences.

## Shape

| | |
|---|---|
| architecture | `MixtralForCausalLM` (model_type `mixtral`) |
| layers | {cfg.num_hidden_layers} |
| hidden size | {cfg.hidden_size} |
| attention | {cfg.num_attention_heads} heads, {cfg.num_key_value_heads} KV heads, head dim {cfg.head_dim}, RoPE θ {cfg.rope_parameters['rope_theta']:g} |
| experts | {cfg.num_local_experts} per layer, top-{cfg.num_experts_per_tok}, expert FFN width {cfg.intermediate_size} (SwiGLU) |
| vocabulary | {cfg.vocab_size} (byte-level BPE, trained on the training split) |
| context | {cfg.max_position_embeddings} tokens (trained at this length) |
| embeddings | untied (`lm_head` separate) |
| parameters | {r['params']:,} total, {r['expert_params']:,} in experts, {r['active_params_per_token']:,} active per token |
| weights on disk | bfloat16, {weights / 2**20:.2f} MiB in {len(list(d.glob('*.safetensors')))} safetensors shards; folder total {size / 2**20:.2f} MiB |

Hidden and expert widths are multiples of 256, so every llama.cpp K-quant applies. For benchmark-size
experts, `python -m training.widen` zero-pads the expert FFN width without changing outputs.

## Data

About {stats['train']['chars'] / 1e6:.1f} M characters ({stats['train']['tokens'] / 1e6:.2f} M tokens) of English
prose from the documentation that Debian (bookworm) packages carry, fetched with `apt-get download` by
`training/prepare_data.py`, which strips code blocks, tables and markup and keeps prose paragraphs:

| package | licence | prose kept |
|---|---|---|
{src_rows}

Documents are split whole: a validation split ({stats['val']['chars'] / 1e3:.0f} k chars, used to pick the
checkpoint) and a held-out split ({stats['heldout']['chars'] / 1e3:.0f} k chars, `data/heldout.txt`, used only
for the figures below). The training text itself is not in the repository; the script rebuilds it.

## Training

`training/train.py` on one {log['device_name']} (torch {log['torch']}), seed {a['seed']}, AdamW (β 0.9/0.95,
weight decay {a['wd']}), linear warmup ({float(a['warmup']) * 100:g}% of the run) and cosine decay to
{float(a['min_lr_frac']) * 100:g}% of the peak LR, batch {a['batch']} × {cfg.max_position_embeddings} tokens, bf16
autocast, gradient clipping 1.0, transformers' `{a['experts_impl']}` expert kernels. The router's
load-balancing loss is on (`output_router_logits=True`, coefficient {cfg.router_aux_loss_coef}), computed **per layer**
and summed over layers: transformers' built-in `load_balancing_loss_func` pools the routes of all
layers before balancing, so it only balances "expert i summed over layers"; a first run trained with it
(log: `training/logs/first_run_pooled_aux_train_log.json`) left single experts with 0.0% of a layer's
routes on the held-out text. With only ~5 M training tokens the model over-fits: in that first run's
sweep the validation loss rose after about ten passes over the data. So the script trains one model per
(epoch budget, peak LR), same seed and data order, and keeps the state with the lowest validation loss:

| epoch budget | peak LR | tokens trained | best val loss | at tokens | final val loss |
|---|---|---|---|---|---|
{runs}

Saved: the {chosen['epochs']:g}-epoch run at **{chosen['best_tokens'] / 1e6:.1f} M tokens seen**
(step {chosen['best_step']}; {chosen['best_tokens'] / stats['train']['tokens']:.1f} passes over the training split),
validation loss {chosen['best_val_loss']:.4f}. Training time for all runs together:
{sum(x['evals'][-1]['time_s'] for x in log['runs']) / 60:.1f} min (evaluations included), ~{chosen['tokens_per_s'] / 1e3:.0f} k tokens/s.

![loss curve](loss_curve.png)

## Held-out evaluation (transformers, CPU, float32)

| metric | value |
|---|---|
| perplexity, {r['window']}-token windows, all {r['scored_tokens']:,} tokens scored | **{r['ppl']:.2f}** |
| bits per byte (same windows) | {r['bits_per_byte']:.3f} |
| perplexity, llama-perplexity style (512-token chunks starting with `<s>`, second half scored) | {r['ppl_llamacpp_style_ctx512']:.2f} |

### Expert load on held-out text

Share of top-{cfg.num_experts_per_tok} routes per expert (%); uniform is {100 / cfg.num_local_experts:.1f}%, the
dead-expert floor (a quarter of uniform) is {25 / cfg.num_local_experts:.2f}%.

| layer | {' | '.join(f'e{i}' for i in range(cfg.num_local_experts))} | min |
|---|{'---|' * (cfg.num_local_experts + 1)}
{load_rows}

Smallest share: {r['min_share'] * 100:.2f}% ({r['min_share_over_uniform']:.2f} × uniform); largest:
{r['max_share'] * 100:.2f}%. No dead expert: **{'passed' if r['dead_expert_check_passed'] else 'FAILED'}**.

![expert load](expert_load.png)

## Samples

Prompts are encoded with a leading `<s>`; 48 new tokens each.

{samples}

## Reproduce

```sh
python -m training.prepare_data                 # Debian packages -> data/work/tokens, data/heldout.txt
python -m training.train --out OUT --minutes {a['minutes']} --eval-every-s {a['eval_every_s']} --epochs {a['epochs']}  # on a GPU
cp data/work/tokens/tokenizer/* OUT/ && python -m training.make_card OUT
```

Every figure above comes from `eval.json` and `train_log.json` in this folder, written by those scripts.
"""
    (d / "README.md").write_text(card)


if __name__ == "__main__":
    main()
