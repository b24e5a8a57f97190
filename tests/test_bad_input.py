"""Bad input: one clear line on stderr, non-zero exit, no traceback, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import assert_one_line_error, run_hobbit


def run_model(path: Path, tmp_path: Path):  # noqa: ANN201
    return run_hobbit("run", str(path), "-p", "hi", "-n", "2",
                      "--stats-json", str(tmp_path / "stats.json"))


def test_missing_file(tmp_path: Path) -> None:
    proc = run_model(tmp_path / "nope.gguf", tmp_path)
    assert_one_line_error(proc, "hobbit: error: model file not found: ", str(tmp_path / "nope.gguf"))
    assert not (tmp_path / "stats.json").exists()


def test_not_a_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("this is not a model\n")
    assert_one_line_error(run_model(bogus, tmp_path), f"hobbit: error: not a GGUF file: {bogus}")


def test_truncated_gguf(mixtral_gguf: Path, tmp_path: Path) -> None:
    data = mixtral_gguf.read_bytes()
    for cut in (len(data) // 2, 200):
        short = tmp_path / f"short{cut}.gguf"
        short.write_bytes(data[:cut])
        proc = run_model(short, tmp_path)
        assert_one_line_error(proc, "hobbit: error: ", str(short))
        assert ("truncated GGUF" in proc.stderr or "corrupt or truncated GGUF" in proc.stderr), proc.stderr


def test_dense_model_is_refused(tmp_path: Path) -> None:
    import gguf

    dense = tmp_path / "dense.gguf"
    w = gguf.GGUFWriter(str(dense), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_one_line_error(run_model(dense, tmp_path),
                          f"hobbit: error: not a Mixture-of-Experts model: {dense} (llama has no experts)")


def test_bad_option_value(mixtral_gguf: Path) -> None:
    proc = run_hobbit("run", str(mixtral_gguf), "-p", "hi", "-n", "0")
    assert_one_line_error(proc, "hobbit: error: ", "'-n'", "greater than or equal to 1", "hobbit run --help")
    assert proc.returncode == 1


def test_unknown_option(mixtral_gguf: Path) -> None:
    proc = run_hobbit("run", str(mixtral_gguf), "-p", "hi", "--bogus")
    assert_one_line_error(proc, "hobbit: error: ", "No such option: --bogus")
    assert proc.returncode == 1


def test_missing_model() -> None:
    proc = run_hobbit("eval")
    assert_one_line_error(proc, "hobbit: error: no model given", "-m MODEL.gguf")


def test_missing_option_value(mixtral_gguf: Path) -> None:
    proc = run_hobbit("run", str(mixtral_gguf), "-p")
    assert_one_line_error(proc, "hobbit: error: ", "'-p' requires an argument", "--help")


def test_budget_beyond_int64_is_refused(mixtral_gguf: Path) -> None:
    """2^64 + 5 bytes must not wrap around to 5 bytes on its way to the engine."""
    for budget in (str(2**64 + 5), f"{2**63}B", "16000000000GiB"):
        proc = run_hobbit("run", str(mixtral_gguf), "-p", "hi", "-n", "2", "--expert-budget", budget)
        assert_one_line_error(proc, "hobbit: error: ", "too large")


def test_same_prefix_and_exit_code_for_every_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.gguf")
    for args in (["run", missing, "-p", "hi"], ["eval", missing, "--expert-budget", "50%"],
                 ["bench", missing, "--plain-hi", missing], ["convert", missing, "--bits", "8"],
                 ["info", missing]):
        proc = run_hobbit(*args)
        assert_one_line_error(proc, "hobbit: error: ")
        assert proc.returncode == 1, args
        assert "nope.gguf" in proc.stderr, (args, proc.stderr)
