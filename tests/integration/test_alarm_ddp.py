"""The calibrated alarm and warm starts under DDP: every rank calibrates on the same gathered drift, takes the same
stratified probe, stops at the same check, and holds every row's warm-start mesh."""

import os
import subprocess
import sys

import torch
from conftest import free_port

WORKER = os.path.join(os.path.dirname(__file__), "alarm_ddp_worker.py")


def run_worker(mode, out):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, WORKER, mode, str(out)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=os.path.dirname(WORKER))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_rank_calibrates_alike_and_stops_at_the_same_check(tmp_path):
    run_worker("stop", tmp_path)
    ranks = [torch.load(tmp_path / f"alarm_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["epoch"] == ranks[1]["epoch"] == 6  # stopped after the check of epoch 5, on both ranks
    assert ranks[0]["ratios"] == ranks[1]["ratios"] and ranks[0]["ratios"][-1] > 5
    assert ranks[0]["indices"] == ranks[1]["indices"] and len(ranks[0]["indices"]) == 8
    assert ranks[0]["history"] == ranks[1]["history"]


def test_warm_starts_share_their_meshes_and_keep_the_ranks_in_lockstep(tmp_path):
    run_worker("warm", tmp_path)
    ranks = [torch.load(tmp_path / f"warm_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert sorted(ranks[0]["meshes"]) == sorted(ranks[1]["meshes"]) == list(range(8))  # every row, on both
    for row, mesh in ranks[0]["meshes"].items():
        assert torch.equal(mesh, ranks[1]["meshes"][row]) and torch.equal(mesh, ranks[0]["state"][row])
    seen = [r["seen"] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 3
    for a, b in zip(*seen):  # the same rounds on both ranks (every round is a collective) and the same results
        assert a["cold"] == b["cold"] and a["warm"] == b["warm"]
        torch.testing.assert_close(a["warm_attr"], b["warm_attr"])
        scale = float(a["cold_attr"].abs().max())
        torch.testing.assert_close(a["warm_attr"], a["cold_attr"], atol=3e-3 * scale, rtol=0)
    assert sum(s["warm"] for s in seen[0][1:]) < sum(s["cold"] for s in seen[0][1:])


def test_multi_label_pairs_are_sharded_like_examples(tmp_path):
    from conftest import trainer
    from test_model_shapes import MultiLabel, multi_hot_loaders

    from ig_lightning import IntegratedGradientsMonitor

    run_worker("multilabel", tmp_path)
    ranks = [torch.load(tmp_path / f"multilabel_rank{r}.pt", weights_only=True) for r in (0, 1)]
    torch.manual_seed(0)
    single = IntegratedGradientsMonitor(probe=6, n_steps=8, target="positive_labels")
    trainer(tmp_path / "single", [single]).validate(MultiLabel(), multi_hot_loaders()[1], verbose=False)
    for got in ranks:  # 8 pairs over 2 ranks, gathered in probe order
        assert got["indices"] == single.probe.indices and torch.equal(got["targets"], single.targets)
        torch.testing.assert_close(got["attributions"], single.last_result.attributions, rtol=1e-5, atol=1e-7)
