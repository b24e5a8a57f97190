"""The expert cache's I/O, loader and policy code under AddressSanitizer and ThreadSanitizer.

`make test` builds the patched tree twice more (build-asan/, build-tsan/) and this test runs
scripts/sanitize.sh on them: the C++ unit tests and the CPU mul_mat_id skip test under ASan,
generation with budgets small enough to evict and reload constantly, and two contexts of one
model decoding at once on two threads while a third reads the statistics and rewrites the
policy (the loader's I/O threads, prefetches and pins included), under ASan and TSan. A
report from either sanitizer ends the script with a non-zero exit.
"""

from __future__ import annotations

import subprocess

from hobbit_py._lib import REPO_ROOT
from tests.conftest import require

SANITIZED = ("llama-completion", "test-hobbit-slots", "test-hobbit-policy", "test-hobbit-mmid", "test-hobbit-mt",
             "test-hobbit-cpu-expert", "test-hobbit-workers")


def test_the_cache_is_clean_under_asan_and_tsan() -> None:
    for build in ("build-asan", "build-tsan"):
        missing = [t for t in SANITIZED if not (REPO_ROOT / build / "bin" / t).exists()]
        require(not missing, f"{build}/bin/{', '.join(missing)} (make build-asan build-tsan)")
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "sanitize.sh")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "ERROR: AddressSanitizer" not in out and "WARNING: ThreadSanitizer" not in out, out[-6000:]
    assert out.rstrip().endswith("sanitizers: all clean"), out[-3000:]
    # every stage ran: the unit tests, generation at two budgets, the concurrency test on both
    assert out.count("== build-asan:") >= 8 and out.count("== build-tsan:") >= 3, out
