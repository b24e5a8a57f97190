"""`hobbit eval`: quality of a policy against the all-hi reference, on llama.cpp's own logits.

Perplexity of the policy, mean KL divergence KL(ref || policy) of the next-token distributions,
and top-1 agreement with the reference, over a text cut into windows of `n_ctx` tokens. The
reference is the same file with HOBBIT off (every routed expert at its highest level, as stock
llama.cpp runs it), computed in the same process window by window.

By default tokens are fed one at a time (`batch=1`), as in interactive decoding, so the policy
decides per token as it does when generating; a larger batch scores prefill behaviour, where
one copy of an expert serves every token of the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hobbit_py._lib import REPO_ROOT, HobbitError
from hobbit_py.model import Model
from hobbit_py.policy import Policy

DEFAULT_TEXT = REPO_ROOT / "data" / "heldout.txt"


def default_text() -> Path:
    """The held-out text of the checkout; an installed hobbit has none and needs --text."""
    if not DEFAULT_TEXT.is_file():
        raise HobbitError(f"no default held-out text ({DEFAULT_TEXT} is missing: hobbit is not "
                          "running from a checkout); give --text FILE")
    return DEFAULT_TEXT


@dataclass
class EvalResult:
    """Quality figures of one policy on one text."""

    tokens_scored: int
    perplexity: float
    reference_perplexity: float
    kl_mean: float
    top1_agreement: float
    cache: dict[str, float | int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _window_logits(model: Model, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits (float32) after each token of one window, from a fresh context."""
    model.reset()
    model.eval(tokens)
    return np.array(model.scores[: len(tokens)], dtype=np.float32)


def _window_logprobs(model: Model, tokens: list[int]) -> np.ndarray:
    """Log-probabilities (float64) after each token of one window, from a fresh context."""
    return _log_softmax(_window_logits(model, tokens))


def evaluate(path: Path, policy: Policy, text: str, *, n_ctx: int = 256, threads: int | None = None,
             max_tokens: int | None = None, batch: int = 1, n_gpu_layers: int = 0,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Score `policy` on `text` against the all-hi reference of the same file (both with
    `n_gpu_layers` layers offloaded: on the GPU tier the reference is stock llama.cpp there)."""
    if policy.is_off:
        raise HobbitError("eval needs an --expert-budget: without one the policy is the reference")
    return compare(path, Policy(expert_budget=None), path, policy, text, n_ctx=n_ctx,
                   threads=threads, max_tokens=max_tokens, batch=batch, n_gpu_layers=n_gpu_layers,
                   progress=progress)


@dataclass
class Reference:
    """The reference model's log-probabilities on a text, window by window, for scoring
    several candidates against one reference run."""

    path: Path
    text: str
    tokens: list[int]
    windows: list[list[int]]
    logits: list[np.ndarray]  # per window, llama.cpp's float32 logits, one row per scored position


def reference(path: Path, policy: Policy, text: str, *, n_ctx: int = 256,
              threads: int | None = None, max_tokens: int | None = None,
              batch: int = 1, n_gpu_layers: int = 0) -> Reference:
    """Run the reference model (usually the all-hi model, HOBBIT off) over `text` in windows
    of `n_ctx` tokens, each starting with BOS."""
    with Model(path, policy=policy, **_model_args(n_ctx, threads, batch, n_gpu_layers)) as ref:
        tokens = ref.tokenize(text.encode(), add_bos=False, special=False)
        if max_tokens is not None:
            tokens = tokens[:max_tokens]
        bos = ref.token_bos()
        step = n_ctx - 1
        windows = [[bos, *tokens[i:i + step]] for i in range(0, len(tokens), step)]
        windows = [w for w in windows if len(w) > 2]
        if not windows:
            raise HobbitError("the text is too short to evaluate")
        logits = [_window_logits(ref, w)[:-1] for w in windows]
    return Reference(path, text, tokens, windows, logits)


def score(ref: Reference, path: Path, policy: Policy, *, threads: int | None = None,
          batch: int = 1, n_gpu_layers: int = 0,
          progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Score the model at `path` under `policy` against `ref` (the same model at another
    precision or policy: it must tokenize the text the same way)."""
    n_ctx = max(len(w) for w in ref.windows)
    with Model(path, policy=policy, **_model_args(max(n_ctx, 16), threads, batch, n_gpu_layers)) as ours:
        tokens = ours.tokenize(ref.text.encode(), add_bos=False, special=False)
        if tokens[:len(ref.tokens)] != ref.tokens:
            raise HobbitError(f"{path} and {ref.path} tokenize the text differently; "
                              "they are not the same model")
        nll = nll_ref = kl = 0.0
        agree = scored = 0
        for i, (window, ref_logits) in enumerate(zip(ref.windows, ref.logits)):
            lp_ref = _log_softmax(ref_logits)
            lp = _window_logprobs(ours, window)[:-1]
            targets = np.asarray(window[1:])
            rows = np.arange(len(targets))
            nll -= lp[rows, targets].sum()
            nll_ref -= lp_ref[rows, targets].sum()
            kl += (np.exp(lp_ref) * (lp_ref - lp)).sum()
            agree += int((lp.argmax(axis=-1) == lp_ref.argmax(axis=-1)).sum())
            scored += len(targets)
            if progress:
                progress(i + 1, len(ref.windows))
        return EvalResult(
            tokens_scored=scored,
            perplexity=float(np.exp(nll / scored)),
            reference_perplexity=float(np.exp(nll_ref / scored)),
            kl_mean=float(max(kl, 0.0) / scored),
            top1_agreement=agree / scored,
            cache=ours.hobbit_stats(),
        )


def compare(ref_path: Path, ref_policy: Policy, path: Path, policy: Policy, text: str, *,
            n_ctx: int = 256, threads: int | None = None, max_tokens: int | None = None,
            batch: int = 1, n_gpu_layers: int = 0,
            progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Score the model at `path` under `policy` against the reference model at `ref_path`
    (e.g. a uniform low-bit GGUF against the all-hi model)."""
    ref = reference(ref_path, ref_policy, text, n_ctx=n_ctx, threads=threads,
                    max_tokens=max_tokens, batch=batch, n_gpu_layers=n_gpu_layers)
    return score(ref, path, policy, threads=threads, batch=batch, n_gpu_layers=n_gpu_layers,
                 progress=progress)


def _model_args(n_ctx: int, threads: int | None, batch: int, n_gpu_layers: int = 0) -> dict:
    return dict(n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, logits_all=True,
                n_batch=batch, n_gpu_layers=n_gpu_layers)
