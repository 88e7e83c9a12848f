"""The prepared GPU script (benchmarks/bench_gpu.py) must stay runnable: here on CPU with tiny configs."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_gpu_figures_script_runs_with_tiny_configs_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_gpu", "--quick", "--device", "cpu", "--skip",
                           "memory", "fsdp", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("ResNet-50  ours", "BERT-base  ours", "check 3: cold"):
        assert line in proc.stdout, proc.stdout
    assert (tmp_path / "gpu_figures.json").exists()
