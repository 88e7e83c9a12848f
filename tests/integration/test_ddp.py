"""The monitor under Lightning's DDP with 2 CPU processes (gloo): sharded, gathered in order, global decisions."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import TinyCNN, TokenModel, free_port, loaders, make_data, token_loaders, trainer

from ig_lightning import IntegratedGradientsMonitor

WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ddp_worker.py")



def run_worker(mode, out, timeout=240):
    # A port of its own: two runs at once (e.g. parallel test sessions) must not meet at one rendezvous.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run([sys.executable, WORKER, mode, str(out)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=os.path.dirname(WORKER))


def test_gathered_attributions_equal_a_single_process_run(tmp_path):
    proc = run_worker("validate", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    torch.manual_seed(0)
    model = TinyCNN()
    single = IntegratedGradientsMonitor(probe=5, n_steps=16)
    trainer(tmp_path / "single", [single]).validate(model, loaders()[1], verbose=False)

    for got in ranks:  # every rank holds all 5 examples, in probe order
        assert torch.equal(got["probe"], single.probe_inputs)
        assert torch.equal(got["targets"], single.targets)
        torch.testing.assert_close(got["attributions"], single.last_result.attributions, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got["delta"], single.last_result.delta, rtol=1e-5, atol=1e-7)
        # The rule tests: the same rule set on every rank, the same statements and numbers as one process.
        numbers = ("text", "coverage", "precision", "class_coverage", "necessity", "sufficiency", "support")
        assert {c: [{k: r[k] for k in numbers} for r in rs] for c, rs in got["rules"].items()} == \
            {c: [{k: r[k] for k in numbers} for r in (x.to_dict() for x in rs)] for c, rs in single.rules.items()}
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and ranks[0]["rules"] == ranks[1]["rules"]


def test_drawn_baselines_noise_and_the_sanity_check_equal_a_single_process_run(tmp_path):
    from ddp_worker import TRUST_SETTINGS

    proc = run_worker("trust", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"trust_rank{r}.pt", weights_only=True) for r in (0, 1)]
    torch.manual_seed(0)
    model = TinyCNN()
    single = IntegratedGradientsMonitor(probe=5, n_steps=16, **TRUST_SETTINGS)
    trainer(tmp_path / "single", [single]).validate(model, loaders()[1], verbose=False)
    for got in ranks:
        torch.testing.assert_close(got["attributions"], single.last_result.attributions, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got["delta"], single.last_result.delta, rtol=1e-5, atol=1e-7)
        for key in ("ig/sanity_spearman", "ig/sanity_spearman_signed", "ig/srg", "ig/deletion_auc"):
            assert got["metrics"][key] == pytest.approx(single.last_metrics[key], abs=1e-5), key
        for key, value in model.state_dict().items():  # the sanity check restored every weight on every rank
            assert torch.equal(got["weights"][key], value), key
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


def test_the_overhead_budget_checks_on_the_same_epochs_on_every_rank(tmp_path):
    proc = run_worker("budget", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"budget_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["epochs"] == ranks[1]["epochs"] and ranks[0]["epochs"][0] == 0
    assert len(ranks[0]["epochs"]) < 8  # the budget spaced the checks
    assert ranks[0]["overhead"] == ranks[1]["overhead"]  # rank zero's share, on every rank


def test_raise_happens_on_every_rank_without_deadlock(tmp_path):
    proc = run_worker("raise", tmp_path)
    assert proc.returncode != 0
    assert "AttributionDriftError" in proc.stderr and "alarm.threshold=0 at epoch 1" in proc.stderr


def test_stop_stops_every_rank_at_the_same_epoch(tmp_path):
    proc = run_worker("stop", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = [torch.load(tmp_path / f"stop_rank{r}.pt", weights_only=True)["epoch"] for r in (0, 1)]
    assert epochs == [2, 2]


def test_keyword_probes_and_their_masks_are_sharded_with_the_examples(tmp_path):
    proc = run_worker("tokens", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"tokens_rank{r}.pt", weights_only=True) for r in (0, 1)]

    torch.manual_seed(0)
    model = TokenModel()
    single = IntegratedGradientsMonitor(probe=5, n_steps=8, layer="embedding")
    trainer(tmp_path / "single", [single]).validate(model, token_loaders()[1], verbose=False)
    mask = single.probe.inputs.kwargs["attention_mask"]
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["attributions"], single.last_result.attributions, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got["delta"], single.last_result.delta, rtol=1e-5, atol=1e-7)
        # rank r attributes probe examples 3r..3r+2 (the last one repeated on rank 1): its path points carry
        # exactly those examples' masks
        own = mask[torch.arange(3 * r, 3 * r + 3).clamp_max(4)]
        # (validation batches hold 8 examples; the check's forwards hold whole rounds of the 3-example shard)
        path_masks = [m for m in got["masks"] if m.shape[0] % 3 == 0]
        assert len(path_masks) >= 4
        assert all(torch.equal(m, own.repeat(len(m) // 3, 1)) for m in path_masks)


def test_auto_runs_the_same_forward_passes_on_every_rank(tmp_path):
    # Sharded strategies need it: every forward is a collective. Rank 0's shard is exact at once, rank 1's
    # needs several refinement rounds; rank 0 runs padding points meanwhile.
    proc = run_worker("lockstep", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"lockstep_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["calls"] == ranks[1]["calls"] and len(ranks[0]["calls"]) > 4
    n_steps = ranks[0]["n_steps"]
    assert int(n_steps[:3].max()) < int(n_steps[3:].min())  # the shards did need different numbers of rounds

    torch.manual_seed(0)
    model = TinyCNN()
    x, y = make_data()[:6]
    x[:3] = 0.0
    single = IntegratedGradientsMonitor(probe=(x, y), n_steps="auto",
                                        integration=dict(tolerance=1e-3, internal_batch_size=4))
    trainer(tmp_path / "single", [single]).validate(model, loaders()[1], verbose=False)
    for got in ranks:
        torch.testing.assert_close(got["attributions"], single.last_result.attributions, rtol=1e-5, atol=1e-7)
