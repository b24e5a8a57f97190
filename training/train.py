"""Train a small Mixtral-style MoE (transformers' MixtralForCausalLM) from scratch.

Reads the uint16 token files written by `training.prepare_data` and writes an HF checkpoint
(bf16, sharded safetensors) plus `train_log.json`. Runs on CUDA (bf16 autocast) or CPU.

The data are a few million tokens, so the best length of training (before over-fitting) and the
learning rate are measured rather than guessed: `--epochs 12@3e-3,8@5e-3,...` trains one model per
(token budget in epochs, peak LR) entry (same seed and data order, each with its own linear-warmup +
cosine schedule), evaluates the validation split every `--eval-every-s` seconds, keeps each run's best
state and saves the best of all. The schedule position is max(tokens / budget, time / cap), where
each run's time cap is its share of `--minutes`, so the command ends on time whatever the throughput.

The router load-balancing loss (Switch Transformer's, coefficient `--aux`) is computed per layer and
summed, see `balance_loss`; transformers' built-in one pools all layers and let single experts die.

    python -m training.train --out OUT                    # the published run's settings (GPU)
    python -m training.train --out /tmp/t --tiny --epochs 0.001 --batch 8 --val-tokens 4000  # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Shape:
    vocab: int = 4096
    hidden: int = 256
    ffn: int = 256  # per-expert intermediate size
    layers: int = 5
    heads: int = 4
    kv_heads: int = 2
    experts: int = 8
    top_k: int = 2
    ctx: int = 1024


TINY = Shape(hidden=64, ffn=64, layers=2, heads=2, kv_heads=1, ctx=128)


def make_config(s: Shape, aux: float) -> MixtralConfig:
    return MixtralConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.ffn, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, head_dim=s.hidden // s.heads,
        num_local_experts=s.experts, num_experts_per_tok=s.top_k, max_position_embeddings=s.ctx,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=None, router_aux_loss_coef=aux, output_router_logits=False, router_jitter_noise=0.0,
        sliding_window=None, attention_dropout=0.0, use_cache=True,
    )


def balance_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Switch-Transformer load-balancing loss computed per layer and summed (1.0 per layer when balanced).

    transformers' own `load_balancing_loss_func` pools the tokens of all layers before balancing,
    so it only balances expert i summed over layers: single layers can still starve experts.
    """
    total = torch.zeros((), device=router_logits[0].device)
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        n_exp = probs.size(-1)
        top = torch.topk(probs, top_k, dim=-1).indices
        frac = torch.zeros(n_exp, device=probs.device).scatter_add_(
            0, top.flatten(), torch.ones(top.numel(), device=probs.device)) / top.numel()
        total = total + n_exp * (frac * probs.mean(0)).sum()
    return total


def windows(data: torch.Tensor, starts: torch.Tensor, seq: int) -> torch.Tensor:
    return data[starts[:, None] + torch.arange(seq, device=data.device)[None, :]].long()


@torch.no_grad()
def evaluate(model: MixtralForCausalLM, data: torch.Tensor, seq: int, batch: int, amp: bool) -> tuple[float, float]:
    """Mean next-token NLL (nats) over non-overlapping windows covering the whole stream, and the
    smallest per-layer expert share of top-k routes (relative to uniform)."""
    model.eval()
    n = (data.numel() - 1) // seq
    starts = torch.arange(n, device=data.device) * seq
    tot, cnt = 0.0, 0
    cfg = model.config
    load = torch.zeros(cfg.num_hidden_layers, cfg.num_local_experts, device=data.device)
    for i in range(0, n, batch):
        x = windows(data, starts[i:i + batch], seq)
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(input_ids=x, output_router_logits=True)
        for layer, rl in enumerate(out.router_logits):
            top = torch.topk(rl.float(), cfg.num_experts_per_tok, dim=-1).indices.flatten()
            load[layer].scatter_add_(0, top, torch.ones_like(top, dtype=load.dtype))
        logits = out.logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1),
                                                reduction="sum")
        tot += nll.item()
        cnt += x[:, 1:].numel()
    model.train()
    min_rel = (load / load.sum(1, keepdim=True)).min().item() * cfg.num_local_experts
    return tot / cnt, min_rel


def pick_experts_impl(args: argparse.Namespace, shape: Shape, train: torch.Tensor, dev: torch.device) -> str:
    """HF's own expert kernels: time a few training steps of each that runs here and keep the faster."""
    if args.experts_impl != "auto":
        return args.experts_impl
    if dev.type != "cuda":
        return "eager"
    times: dict[str, float] = {}
    for impl in ("grouped_mm", "eager"):
        try:
            model = MixtralForCausalLM(make_config(shape, args.aux)).to(dev)
            model.set_experts_implementation(impl)
            x = windows(train, torch.arange(args.batch, device=dev) * shape.ctx, shape.ctx)
            for i in range(7):
                if i == 2:
                    torch.cuda.synchronize()
                    t0 = time.time()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(input_ids=x, labels=x, output_router_logits=True).loss
                loss.backward()
            torch.cuda.synchronize()
            times[impl] = (time.time() - t0) / 5
        except Exception as e:  # noqa: BLE001 - an implementation this torch lacks is skipped
            print(f"experts implementation {impl} failed: {type(e).__name__}: {e}", flush=True)
    print(f"seconds per step by experts implementation: {times}", flush=True)
    return min(times, key=lambda k: times[k])


def lr_at(frac: float, peak: float, warmup: float, floor: float) -> float:
    if frac < warmup:
        return peak * frac / warmup
    p = min(1.0, (frac - warmup) / (1 - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def train_one(args: argparse.Namespace, shape: Shape, budget: int, seconds: float, lr: float, train: torch.Tensor,
              val: torch.Tensor, dev: torch.device, tag: str) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    torch.manual_seed(args.seed)
    model = MixtralForCausalLM(make_config(shape, args.aux)).to(dev)
    model.set_experts_implementation(args.experts_impl)
    model.router_aux_loss_coef = 0.0  # replaced by the per-layer balance_loss below
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=dev.type == "cuda")
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    amp = dev.type == "cuda"
    seq, hi = shape.ctx, train.numel() - shape.ctx - 1
    log: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor] | None, int, int] = (float("inf"), None, 0, 0)
    step, tokens, t0, last_eval, frac = 0, 0, time.time(), 0.0, 0.0
    while True:
        elapsed = time.time() - t0
        frac = max(tokens / budget, elapsed / seconds)
        done = frac >= 1.0
        if done or elapsed - last_eval >= args.eval_every_s:
            v, min_rel = evaluate(model, val, seq, args.batch, amp)
            evals.append({"step": step, "tokens": tokens, "time_s": round(elapsed, 2), "val_loss": v,
                          "min_expert_share_over_uniform": min_rel})
            print(f"[{tag}] step {step} tokens {tokens / 1e6:.1f}M t {elapsed:.0f}s val {v:.4f} "
                  f"min expert share {min_rel:.2f}x uniform", flush=True)
            if v < best[0]:
                best = (v, {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}, step, tokens)
            last_eval = elapsed
        if done:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(frac, lr, args.warmup, args.min_lr_frac)
        x = windows(train, torch.randint(0, hi, (args.batch,), device=dev, generator=gen), seq)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(input_ids=x, labels=x, output_router_logits=True)
            aux_t = balance_loss(out.router_logits, shape.top_k)
        opt.zero_grad(set_to_none=True)
        (out.loss + args.aux * aux_t).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        if step % args.log_every == 0 or step == 1:
            log.append({"step": step, "tokens": tokens, "time_s": round(time.time() - t0, 2),
                        "lr": opt.param_groups[0]["lr"], "loss": out.loss.item(),
                        "aux_loss_per_layer": aux_t.item() / shape.layers,
                        "grad_norm": float(gnorm)})
    assert best[1] is not None
    summary = {"tag": tag, "lr": lr, "token_budget": budget, "time_cap_s": seconds, "steps": step, "tokens": tokens, "best_val_loss": best[0],
               "best_step": best[2], "best_tokens": best[3], "final_val_loss": evals[-1]["val_loss"],
               "tokens_per_s": tokens / max(1e-9, time.time() - t0), "log": log, "evals": evals}
    return best[1], summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data/work/tokens")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, default=None, help="copy these tokenizer files into --out")
    ap.add_argument("--minutes", type=float, default=7.0, help="time cap for all runs together")
    ap.add_argument("--epochs", default="12@3e-3,8@5e-3,12@5e-3,6@8e-3,10@8e-3",
                    help="one run per entry EPOCHS or EPOCHS@LR (token budget in passes over the data); best val kept")
    ap.add_argument("--val-tokens", type=int, default=0, help="evaluate on the first N val tokens only (tests)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=float, default=0.04, help="fraction of the run")
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--aux", type=float, default=0.02, help="per-layer router load-balancing loss coefficient")
    ap.add_argument("--eval-every-s", type=float, default=8.0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--experts-impl", default="auto", help="auto | eager | grouped_mm (transformers' kernels)")
    ap.add_argument("--tiny", action="store_true", help="a tiny shape for smoke tests")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    dev = torch.device(args.device)
    meta = json.loads((args.data / "meta.json").read_text())
    shape = TINY if args.tiny else Shape()
    shape.vocab = int(meta["vocab"])
    load = lambda k: torch.from_numpy(np.fromfile(args.data / f"{k}.u16", dtype=np.uint16).astype(np.int32)).to(dev)
    train, val = load("train"), load("val")
    if args.val_tokens:
        val = val[: args.val_tokens]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}), torch {torch.__version__}, "
          f"train {train.numel()} tokens, val {val.numel()} tokens, shape {shape}", flush=True)

    args.experts_impl = pick_experts_impl(args, shape, train, dev)
    print(f"experts implementation: {args.experts_impl}", flush=True)
    runs = []
    best_state: dict[str, torch.Tensor] | None = None
    chosen = 0
    plan = [(float(e.split("@")[0]), float(e.split("@")[1]) if "@" in e else args.lr) for e in args.epochs.split(",")]
    total = sum(e for e, _ in plan)
    for i, (e, lr) in enumerate(plan):
        budget, cap = int(e * train.numel()), args.minutes * 60 * e / total
        state, summary = train_one(args, shape, budget, cap, lr, train, val, dev, f"run{i}:{e:g}ep@{lr:g}")
        summary["epochs"] = e
        print(f"[run{i}] best val {summary['best_val_loss']:.4f} at {summary['best_tokens'] / 1e6:.1f}M tokens, "
              f"{summary['tokens_per_s'] / 1e3:.0f}k tok/s", flush=True)
        if best_state is None or summary["best_val_loss"] < min(r["best_val_loss"] for r in runs):
            best_state, chosen = state, i
        runs.append(summary)

    assert best_state is not None
    model = MixtralForCausalLM(make_config(shape, args.aux))
    model.load_state_dict(best_state)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, max_length=shape.ctx)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out), max_shard_size="15MB")
    if args.tokenizer:
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(args.tokenizer / f, args.out / f)
    n_params = sum(p.numel() for p in model.parameters())
    result = {"shape": asdict(shape), "params": n_params, "chosen_run": chosen, "device": str(dev),
              "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
              "data": {k: meta[k] for k in ("train", "val", "heldout") if k in meta}, "runs": runs}
    (args.out / "train_log.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {n_params} params to {args.out}; chose run {chosen} "
          f"(val {runs[chosen]['best_val_loss']:.4f}, {runs[chosen]['best_tokens'] / 1e6:.1f}M tokens)", flush=True)


if __name__ == "__main__":
    main()
