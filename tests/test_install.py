"""A non-editable install (`pip install .`) runs a model with the library named by HOBBIT_LIB_DIR."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from hobbit_py._lib import REPO_ROOT, lib_dir
from tests.conftest import assert_one_line_error


def test_installed_package_finds_the_library_through_hobbit_lib_dir(mixtral_gguf: Path,
                                                                    tmp_path: Path) -> None:
    # build the wheel from a copy of the sources, so no build/ or egg-info lands in the repo
    src = tmp_path / "src"
    src.mkdir()
    for name in ("hobbit_py", "convert"):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True)
    # the dependencies (llama-cpp-python, gguf, typer, ...) come from the test venv, as a
    # plain path entry: its editable hobbit finder is not activated, so hobbit_py is the wheel's
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("HOBBIT_LIB_DIR", "PYTHONPATH")}
    where = subprocess.run([str(python), "-c", "import hobbit_py; print(hobbit_py.__file__)"],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where.stdout

    hobbit = str(venv / "bin" / "hobbit")
    args = [hobbit, "run", str(mixtral_gguf), "-p", "Once upon a time", "-n", "4", "-t", "2"]
    missing = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert_one_line_error(missing, "HOBBIT_LIB_DIR")

    found = subprocess.run(args, cwd=tmp_path, env={**env, "HOBBIT_LIB_DIR": str(lib_dir())},
                           capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("Once upon a time") and len(found.stdout) > len("Once upon a time\n")
