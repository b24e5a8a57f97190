"""`hobbit run` and the Model class on the fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hobbit_py.model import Model
from tests.conftest import assert_one_line_error, run_hobbit


def test_hobbit_run_streams_text_and_reports_speed(moe_gguf: Path, tmp_path: Path) -> None:
    stats_path = tmp_path / "stats.json"
    proc = run_hobbit("run", str(moe_gguf), "--prompt", "Once upon a time", "-n", "16",
                      "--threads", "2", "--stats-json", str(stats_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Once upon a time")
    assert len(proc.stdout.strip()) > len("Once upon a time")
    assert "prefill:" in proc.stderr and "tok/s" in proc.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["tokens_generated"] == 16
    assert stats["prefill_tokens_per_s"] > 0
    assert stats["decode_tokens_per_s"] > 0


def test_model_stream_matches_generate(mixtral_gguf: Path) -> None:
    with Model(mixtral_gguf, n_ctx=256, n_threads=2) as model:
        streamed = "".join(model.stream_text("Hello", max_tokens=12))
        generated = model.generate_text("Hello", max_tokens=12)
    assert streamed == generated.text
    assert generated.stats.tokens_generated == 12


def test_sampling_is_seeded(mixtral_gguf: Path) -> None:
    def sample(seed: int, temp: float) -> list[int]:
        with Model(mixtral_gguf, n_ctx=256, n_threads=2, seed=seed) as model:
            return model.generate_text("Hello", max_tokens=16, temp=temp).tokens

    assert sample(7, 1.0) == sample(7, 1.0)
    assert sample(7, 1.0) != sample(8, 1.0)  # the seed reaches the sampler
    assert sample(7, 0.0) == sample(8, 0.0)  # greedy ignores it
    assert sample(7, 1.0) != sample(7, 0.0)  # and temp is not ignored


def test_cli_seed_and_temp(mixtral_gguf: Path) -> None:
    def text(*args: str) -> str:
        proc = run_hobbit("run", str(mixtral_gguf), "-p", "Hello", "-n", "16", "-t", "2", *args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert text("--temp", "1.0", "--seed", "1") == text("--temp", "1.0", "--seed", "1")
    assert text("--temp", "1.0", "--seed", "1") != text("--temp", "1.0", "--seed", "2")
    assert text("--seed", "1") == text("--seed", "2")


def test_llama_cpp_flags(mixtral_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-m, -p, -n, -t, -c, -ngl, -s as in llama.cpp, and --hi-type/--lo-type, reach the model."""
    import hobbit_py.cli as cli

    seen: dict = {}
    real = cli.load_model

    def spy(path: Path, policy, **kwargs):  # noqa: ANN001, ANN202
        seen.update(path=path, policy=policy, **kwargs)
        model = real(path, policy, **kwargs)
        seen["n_gpu_layers_param"] = model.model_params.n_gpu_layers
        seen["n_ctx_actual"] = model.n_ctx()
        return model

    monkeypatch.setattr(cli, "load_model", spy)
    cli.run_app(["run", "-m", str(mixtral_gguf), "-p", "Hello", "-n", "3", "-t", "2", "-c", "512",
                 "-ngl", "99", "-s", "5", "--expert-budget", "50%", "--skip-threshold", "0.1"])
    assert seen["path"] == mixtral_gguf and seen["threads"] == 2 and seen["seed"] == 5
    assert seen["n_ctx"] == 512 and seen["n_ctx_actual"] == 512
    assert seen["n_gpu_layers"] == 99 and seen["n_gpu_layers_param"] == 99
    assert seen["policy"].skip_threshold == 0.1 and seen["policy"].expert_budget == "50%"


def test_type_flags_reach_the_engine(tmp_path: Path) -> None:
    from hobbit_py.fixtures import write_fixture

    mixed = write_fixture(tmp_path / "m.gguf", "mixtral", expert_types=("q8_0", "q4_0"))
    ok = run_hobbit("run", str(mixed), "-p", "Hi", "-n", "2", "-t", "2", "--expert-budget", "50%",
                    "--hi-type", "q8_0", "--lo-type", "q4_0")
    assert ok.returncode == 0, ok.stderr
    bad = run_hobbit("run", str(mixed), "-p", "Hi", "-n", "2", "--expert-budget", "50%",
                     "--lo-type", "q2_k")
    assert_one_line_error(bad, "hobbit: error: ", "q2_k")


def test_help_is_complete() -> None:
    top = run_hobbit("--help")
    assert top.returncode == 0 and "run" in top.stdout
    sub = run_hobbit("run", "--help")
    for flag in ("--prompt", "-n", "--temp", "--seed", "--threads", "--stats-json", "-ngl",
                 "--model", "--ctx-size", "--hi-type", "--lo-type", "--expert-budget"):
        assert flag in sub.stdout


def test_expert_summary_says_when_every_expert_is_resident() -> None:
    """The GPU tier's summary line names resident experts (hobbit.resident), and only then."""
    from hobbit_py.cli import expert_summary  # noqa: PLC0415

    report = {"tier": 1, "routes_total": 40, "hits_hi": 40, "hits_lo": 0, "loads_hi": 0,
              "loads_lo": 0, "skipped": 0, "bytes_loaded": 2**20, "load_stall_ms": 0.0,
              "expert_cache_peak_bytes": 2**20, "expert_budget_bytes": 2**21,
              "host_tier_bytes": 2**20, "bytes_read": 0, "cpu_hi": 0, "cpu_lo": 0}
    assert "every expert resident in VRAM" in expert_summary({**report, "experts_resident": 1})
    assert "resident" not in expert_summary({**report, "experts_resident": 0})
    assert "resident" not in expert_summary({**report, "tier": 0, "experts_resident": 0})
