"""Greedy generation with llama-cpp-python on the *stock* library, as JSON on stdout.

Run as a subprocess (a process loads one libllama):
    python tests/stock_generate.py MODEL PROMPT N [LOGITS.npy]
prints the generated token ids; with LOGITS.npy also saves the prompt's logits there.

Weight repacking (CPU "extra buffer types") is off: HOBBIT's slot pools are plain CPU
buffers, so the stock reference must run the same matmul kernels for logits to match bit for
bit (repacked Q4_0 kernels round differently).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    model, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logits_path = sys.argv[4] if len(sys.argv) > 4 else None
    os.environ["LLAMA_CPP_LIB_PATH"] = str(REPO_ROOT / "build-stock" / "bin")
    import llama_cpp
    import numpy as np

    default_params = llama_cpp.llama_cpp.llama_model_default_params

    def params_without_repack():  # noqa: ANN202
        params = default_params()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = params_without_repack

    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_threads=2, n_threads_batch=2,
                          seed=0, verbose=False, logits_all=logits_path is not None)
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    if logits_path:
        llm.eval(tokens)
        np.save(logits_path, np.array(llm.scores[: len(tokens)], dtype=np.float32))
    out: list[int] = []
    for token in llm.generate(tokens, temp=0.0, repeat_penalty=1.0, reset=True):
        if token == llm.token_eos() or len(out) >= n:
            break
        out.append(token)
    print(json.dumps(out))
    llm.close()


if __name__ == "__main__":
    main()
