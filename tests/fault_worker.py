"""Generate several times with one `Model`, reporting each attempt, for the fault tests.

    python tests/fault_worker.py SPEC_JSON

SPEC: model, budget, direct_io, prompt, n, attempts, policy (optional Policy fields).
Prints one JSON line: {"load_error": str|None, "attempts": [{"tokens": [...], "error": str|None}]}.
Run under the fault-injection library (LD_PRELOAD), so it is a process of its own.
"""

from __future__ import annotations

import json
import sys

from hobbit_py._lib import HobbitError
from hobbit_py.model import Model
from hobbit_py.policy import Policy


def main() -> None:
    spec = json.loads(sys.argv[1])
    policy = Policy(expert_budget=spec["budget"], direct_io=spec["direct_io"], **spec.get("policy", {}))
    report: dict = {"load_error": None, "attempts": []}
    try:
        model = Model(spec["model"], policy=policy, n_ctx=256, n_threads=2)
    except HobbitError as exc:
        report["load_error"] = str(exc)
        print(json.dumps(report))
        return
    with model:
        for _ in range(spec["attempts"]):
            tokens: list[int] = []
            error = None
            try:
                for token in model.stream_token_ids(spec["prompt"], max_tokens=spec["n"]):
                    tokens.append(token)
            except HobbitError as exc:
                error = str(exc)
            report["attempts"].append({"tokens": tokens, "error": error})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
