"""`make run`: generate with the embedded default model under an expert budget.

The default model is our trained hobbit-mixtral-tiny (models/). On first use it is converted
with `hobbit convert` into a q8_0 + q4_k multi-precision GGUF in out/; then it runs through
the same code path as `hobbit run`, with a budget that forces offloading and the stats printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hobbit_py._lib import REPO_ROOT

MODEL_DIR = REPO_ROOT / "models" / "hobbit-mixtral-tiny"
OUT_DIR = REPO_ROOT / "out"
BITS = "q8_0,q4_k"
PROMPT = "The documentation explains how the server stores each table on disk, and"
BUDGET = "30%"


def default_model() -> Path:
    """Path of the default model as a multi-precision GGUF, converted on first use."""
    path = OUT_DIR / f"{MODEL_DIR.name}-{BITS.replace(',', '-')}.gguf"
    if not path.exists():
        from hobbit_convert.convert import convert  # noqa: PLC0415

        OUT_DIR.mkdir(exist_ok=True)
        print(f"hobbit convert {MODEL_DIR.relative_to(REPO_ROOT)} --bits {BITS} "
              f"-o {path.relative_to(REPO_ROOT)}", file=sys.stderr)
        convert(str(MODEL_DIR), BITS, path)
    return path


def main() -> None:
    from hobbit_py.cli import main as cli_main  # noqa: PLC0415

    model = default_model()
    args = ["run", str(model.relative_to(REPO_ROOT)), "--prompt", PROMPT, "-n", "64",
            "--expert-budget", BUDGET, "--stats-json", "out/default-run-stats.json"]
    print("hobbit " + " ".join(f'"{a}"' if " " in a else a for a in args), file=sys.stderr)
    sys.argv = ["hobbit", *args]
    cli_main()


if __name__ == "__main__":
    main()
