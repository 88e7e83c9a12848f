"""Run by tests/functional/test_auto.py as `python tests/lockstep_worker.py OUT_DIR`: 2 CPU processes (gloo) in lockstep.

Rank 0 explains easy examples (near the baseline, few rounds), rank 1 hard ones (far out on a ReLU network, and
one example more); ``sync`` is an all_reduce(MAX). A cold call, then a warm-started one on a slightly moved
model. Every rank saves its forward count, the points of each
gradient call, and its results with and without ``sync``. Also holds the stand-in path and the small model that
tests/functional/test_auto.py uses: this file imports only torch, so the spawned processes start fast.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp



class CountingPath:
    """A stand-in for the engine's path: the straight line from ``start`` to ``end`` through a model ``f``."""

    def __init__(self, f, start, end, batch=None):
        self.f, self.start, self.diff, self.batch = f, start, end - start, batch
        self.n, self.dtype, self.device = start.shape[0], start.dtype, start.device
        self.calls, self.forwards = [], 0  # points per gradients_at call; forward passes

    def gradients_at(self, idx, alphas):
        self.calls.append(len(idx))
        grads, outs = [], []
        step = self.batch or max(len(idx), 1)
        for k in range(0, len(idx), step):
            i, a = idx[k:k + step], alphas[k:k + step]
            z = (self.start[i] + a[:, None] * self.diff[i]).requires_grad_(True)
            out = self.f(z)
            self.forwards += 1
            (g,) = torch.autograd.grad(out.sum(), z)
            grads.append(g)
            outs.append(out.detach())
        return torch.cat(grads), torch.cat(outs)


def mlp(activation, seed=0, width=16, scale=2.0):
    """``F: R^6 -> R``, a one-hidden-layer network in float64 (``scale`` sharpens its first layer)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, width), activation(), torch.nn.Linear(width, 1)).double()
    with torch.no_grad():
        net[0].weight.mul_(scale)
    for p in net.parameters():
        p.requires_grad_(False)
    return lambda z: net(z)[:, 0]


def work(rank: int, out: str) -> None:
    from ig_lightning.functional.adaptive import integrate_auto  # here, not at the top: the parent process never needs it

    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        def sync(k: int) -> int:
            t = torch.tensor([k])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return int(t)

        f = mlp(torch.nn.ReLU, scale=4.0)
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(4 + rank, 6, dtype=torch.float64, generator=g) * (0.05 if rank == 0 else 3.0)
        saved = {"synced": [], "alone": [], "forwards": [], "points": [], "alone_rounds": []}
        # A cold call, then a warm one on a slightly moved model from the cold call's meshes (the next check).
        warm = {"synced": None, "alone": None}
        for model in (f, mlp(torch.nn.ReLU, scale=4.2)):
            results = {}
            for key, s in (("synced", sync), ("alone", None)):
                path = CountingPath(model, torch.zeros_like(x), x, batch=7)
                with torch.no_grad():
                    delta = model(x) - model(torch.zeros_like(x))
                res = integrate_auto(path, delta, tolerance=1e-3, max_steps=512, delta_floor=1e-3, sync=s,
                                     warm_start=warm[key] or True)
                warm[key] = res.warm_start
                results[key] = [res.avg_grad, res.n_steps, res.n_evaluations, res.attribution_error]
                if s is not None:
                    saved["forwards"].append(path.forwards)
                    saved["points"].append(path.calls)
                else:
                    saved["alone_rounds"].append(len(path.calls))
            saved["synced"] += results["synced"]
            saved["alone"] += results["alone"]
        torch.save(saved, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(work, args=(sys.argv[1],), nprocs=2, join=True)
