"""One `hobbit bench` measurement in its own process; prints a JSON report as its last line.

    python -m hobbit_py.bench_worker SPEC_JSON

Stock runs load build-stock's library (LLAMA_CPP_LIB_PATH set by the parent) through
llama-cpp-python directly; our runs go through `Model` with the given policy.
"""

from __future__ import annotations

import json
import resource
import sys

from hobbit_py.generation import GenerationStats, peak_rss_bytes, timed_tokens


def run_stock(spec: dict) -> dict:
    import llama_cpp  # noqa: PLC0415  (LLAMA_CPP_LIB_PATH points at build-stock)

    llm = llama_cpp.Llama(model_path=spec["model"], n_ctx=1024, n_threads=spec["threads"],
                          n_threads_batch=spec["threads"], use_mmap=spec["use_mmap"], verbose=False)
    stats = GenerationStats()
    tokens = llm.tokenize(spec["prompt"].encode(), add_bos=True, special=False)
    stats.prompt_tokens = len(tokens)
    generated = list(timed_tokens(llm, tokens, stats, spec["n_predict"]))
    llm.close()
    return {**stats.as_dict(), "tokens": generated, "peak_rss_bytes": peak_rss_bytes()}


def run_ours(spec: dict) -> dict:
    from hobbit_py.model import Model  # noqa: PLC0415  (binds the patched library)
    from hobbit_py.policy import Policy  # noqa: PLC0415

    policy = Policy(**spec["policy"])
    with Model(spec["model"], policy=policy, n_ctx=1024, n_threads=spec["threads"],
               n_threads_batch=spec["threads"]) as model:
        tokens: list[int] = []
        after_prefill = 0
        for token in model.stream_token_ids(spec["prompt"], max_tokens=spec["n_predict"]):
            if not tokens:  # the first token comes out of the prefill
                after_prefill = int(model.hobbit_stats().get("bytes_loaded", 0))
            tokens.append(token)
        report = {**model.hobbit_stats(), "tokens": tokens}
        report["decode_bytes_loaded"] = int(report.get("bytes_loaded", 0)) - after_prefill
        if model.budget_decision is not None:
            report["budget_decision"] = model.budget_decision.reason
        return report


def main() -> None:
    from hobbit_py._lib import HobbitError  # noqa: PLC0415
    from hobbit_py.errors import one_line  # noqa: PLC0415

    spec = json.loads(sys.argv[1])
    try:
        report = run_stock(spec) if spec["stock"] else run_ours(spec)
    except HobbitError as exc:  # the parent reports this line as the variant's failure
        print(one_line(str(exc)), file=sys.stderr)
        sys.exit(1)
    report["major_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    print(json.dumps(report))


if __name__ == "__main__":
    main()
