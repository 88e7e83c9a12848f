"""The layering: the engine (ig_lightning.functional) runs without Lightning; the monitor needs it."""

import subprocess
import sys
import textwrap

BLOCK = textwrap.dedent("""
    import sys
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        sys.modules[name] = None  # any import of it raises ImportError
""")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_the_engine_imports_and_runs_without_lightning():
    proc = run("""
        import torch
        import ig_lightning.functional
        from ig_lightning import integrated_gradients
        model = torch.nn.Linear(3, 2)
        x = torch.tensor([[1.0, -2.0, 0.5]])
        result = integrated_gradients(model, x, target=1, n_steps=4)
        expected = x * model.weight[1].detach()
        assert torch.allclose(result.attributions, expected, atol=1e-6), (result.attributions, expected)
        assert not any(m == "lightning" or m.startswith("lightning.") for m in sys.modules
                       if sys.modules[m] is not None)
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


def test_the_monitor_needs_lightning():
    proc = run("""
        try:
            from ig_lightning import IntegratedGradientsMonitor
        except ImportError as error:
            print("ImportError:", error)
        else:
            print("imported")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ImportError:"), proc.stdout
    assert "lightning" in proc.stdout
