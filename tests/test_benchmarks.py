"""Every benchmark's ``--quick`` run (tiny sizes, seconds): an API change breaks the build, not the next user.

Each script runs as a user runs it (``python benchmarks/NAME.py --quick``, in a subprocess with this
interpreter) and must exit 0 and print its side-by-side ratio lines. Timings are not asserted.
The full runs (``make bench``) stay out of CI.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NUMBER = r"([-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf))"
ATTACKS = ("loss", "secmi", "pia", "pian", "sima", "gsa")  # benchmarks/attacks.py's default list
FAMILIES = ("sd15", "sdxl", "dit", "pixart", "sd3")  # gpu_sd_check.py --quick runs every family

# script -> the ratio lines it must print (each a regex whose groups are the ratios), how many of each
CPSAMPLE_LINES = [(rf"unguided {NUMBER}s\s+guided {NUMBER}s\s+ratio {NUMBER}", 1),
                  (rf"floor 1 \+ fwd\+bwd/UNet = {NUMBER} \(ratio/floor {NUMBER}\)", 1)]
SCALE_LINES = [(rf'"ray1/local": {NUMBER}', 1), (rf'"ray1/ray1": {NUMBER}', 1)]
EXPECTED = {
    "attacks.py": [(rf"^{name}\s+(?:gray|white|black)-box\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", 1)
                   for name in ATTACKS] + [(r"^attack\s+threat .* ratio\s+ratio_fb", 1)],
    "search.py": [(rf"ratio\s+{NUMBER}x \(\s*{NUMBER}x incl\. generating\)", 1),
                  (rf"IVF nlist=\d+ nprobe=\d+: recall@1 {NUMBER} .* = {NUMBER}x faster than exact", 1)],
    "cpsample.py": CPSAMPLE_LINES,
    # every installed mitigation: cpsample is built in, so its row is always there
    "mitigation_cost.py": [(rf"^cpsample\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+\S", 1),
                           (r"^method\s+setup_s\s+unprotected_s\s+protected_s\s+ratio\s+carries", 1)],
    "cpsample_gpu_check.py": CPSAMPLE_LINES,
    "gpu_sd_check.py": [(rf"guided/unguided time: {NUMBER} \(gate always on\), {NUMBER} \(alpha", len(FAMILIES))],
    "scale.py": SCALE_LINES,
    "scale_gpu_check.py": SCALE_LINES,
}
NEEDS_RAY = {"scale.py", "scale_gpu_check.py"}


def test_every_benchmark_has_a_quick_run():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(EXPECTED), "a benchmark without a --quick check here (or a check without its script)"
    for name in scripts:
        assert "--quick" in (BENCHMARKS / name).read_text(), f"{name} has no --quick mode"


@pytest.mark.slow
@pytest.mark.parametrize("script", [pytest.param(s, marks=[pytest.mark.ray] if s in NEEDS_RAY else [])
                                    for s in EXPECTED])
def test_benchmark_quick_run(script, tmp_path):
    if script in NEEDS_RAY and importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'privaudit[ray]')")
    # no spin-waiting OpenMP threads (the scripts set it too, unless the environment says otherwise)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} --quick exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    for pattern, count in EXPECTED[script]:
        found = re.findall(pattern, proc.stdout, flags=re.MULTILINE)
        assert len(found) == count, f"{script} --quick printed {len(found)} lines like {pattern!r}:\n{proc.stdout}"
        if re.compile(pattern).groups:  # the numbers it printed (a header has none)
            for groups in found:
                values = [float(v) for v in (groups if isinstance(groups, tuple) else (groups,))]
                assert not any(math.isnan(v) for v in values), f"{script}: a ratio is nan:\n{proc.stdout}"
