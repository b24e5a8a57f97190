"""`make run`: generate with the embedded default model under an expert budget.

The default model is prepared once into out/ (converted or generated), then run through the
same code path as `hobbit run`, with a budget that forces offloading and the stats printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hobbit_py._lib import REPO_ROOT

OUT_DIR = REPO_ROOT / "out"
PROMPT = "The history of the printing press begins"
BUDGET = "30%"


def default_model() -> Path:
    """Path of the default model in GGUF, made on first use."""
    from hobbit_py.fixtures import write_fixture  # noqa: PLC0415

    path = OUT_DIR / "default-fixture-mixtral-q8_0-q4_0.gguf"
    if not path.exists():
        OUT_DIR.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_fixture(tmp, "mixtral", expert_types=("q8_0", "q4_0"))
        tmp.replace(path)
    return path


def main() -> None:
    from hobbit_py.cli import main as cli_main  # noqa: PLC0415

    model = default_model()
    sys.argv = ["hobbit", "run", str(model), "--prompt", PROMPT, "-n", "64",
                "--expert-budget", BUDGET, "--stats-json", str(OUT_DIR / "default-run-stats.json")]
    print(f"hobbit run {model.relative_to(REPO_ROOT)} --expert-budget {BUDGET}", file=sys.stderr)
    cli_main()


if __name__ == "__main__":
    main()
