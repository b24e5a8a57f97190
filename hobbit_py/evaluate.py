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
from hobbit_py.model import Model, decode_failure
from hobbit_py.policy import Policy

DEFAULT_TEXT = REPO_ROOT / "data" / "heldout.txt"


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


def _window_logprobs(model: Model, tokens: list[int]) -> np.ndarray:
    """Log-probabilities after each token of one window, from a fresh context."""
    llm = model.llama
    llm.reset()
    try:
        llm.eval(tokens)
    except RuntimeError as exc:
        if "llama_decode" not in str(exc):
            raise
        raise decode_failure(llm, exc) from None
    return _log_softmax(np.asarray(llm.scores[: len(tokens)]))


def evaluate(path: Path, policy: Policy, text: str, *, n_ctx: int = 256, threads: int | None = None,
             max_tokens: int | None = None, batch: int = 1,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Score `policy` on `text` against the all-hi reference of the same file."""
    if policy.expert_budget is None:
        raise HobbitError("eval needs an --expert-budget: without one the policy is the reference")
    common = dict(n_ctx=n_ctx, threads=threads, logits_all=True, n_batch=batch)
    with Model(path, policy=Policy(), **common) as ref, Model(path, policy=policy, **common) as ours:
        tokens = ref.llama.tokenize(text.encode(), add_bos=False, special=False)
        if max_tokens is not None:
            tokens = tokens[:max_tokens]
        bos = ref.llama.token_bos()
        step = n_ctx - 1
        windows = [[bos, *tokens[i:i + step]] for i in range(0, len(tokens), step)]
        windows = [w for w in windows if len(w) > 2]
        if not windows:
            raise HobbitError("the text is too short to evaluate")
        nll = nll_ref = kl = 0.0
        agree = scored = 0
        for i, window in enumerate(windows):
            lp_ref = _window_logprobs(ref, window)[:-1]
            lp = _window_logprobs(ours, window)[:-1]
            targets = np.asarray(window[1:])
            rows = np.arange(len(targets))
            nll -= lp[rows, targets].sum()
            nll_ref -= lp_ref[rows, targets].sum()
            kl += (np.exp(lp_ref) * (lp_ref - lp)).sum()
            agree += int((lp.argmax(axis=-1) == lp_ref.argmax(axis=-1)).sum())
            scored += len(targets)
            if progress:
                progress(i + 1, len(windows))
        return EvalResult(
            tokens_scored=scored,
            perplexity=float(np.exp(nll / scored)),
            reference_perplexity=float(np.exp(nll_ref / scored)),
            kl_mean=float(kl / scored),
            top1_agreement=agree / scored,
            cache=ours.stats(),
        )
