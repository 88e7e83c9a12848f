"""``warm_start=True``: every probe example's mesh from the last check, to start the next check's paths from.

The meshes are kept per probe row on CPU (a few dozen float64 numbers each), so they do not depend on how the
probe is split into groups or over processes; under several processes every process sends its rows' meshes to
the others after a check, so each one (and so the checkpoint, written by rank 0) holds them all. A row without
a mesh (the first check, a resumed run without one, a mesh larger than ``max_steps``) starts cold, from the grid.

Example::

    >>> import torch
    >>> from ig_lightning.functional.warm import WarmStart
    >>> meshes = PathMeshes()
    >>> meshes.update(torch.tensor([3]), WarmStart(torch.zeros(3, dtype=torch.long), torch.tensor([0, .5, 1.]), 1))
    >>> start = meshes.start_for(torch.tensor([3, 4]), max_steps=256)
    >>> start.alpha.tolist(), start.owner.tolist()
    ([0.0, 0.5, 1.0, 0.0, 0.25, 0.5, 0.75, 1.0], [0, 0, 0, 1, 1, 1, 1, 1])
"""

from __future__ import annotations

from typing import Any

import torch

from ig_lightning.functional.warm import WarmStart

__all__ = ["PathMeshes"]

_GRID = torch.linspace(0, 1, 5, dtype=torch.float64)


class PathMeshes:
    """Probe row -> that row's mesh (sorted float64 alphas), with ``update()`` and ``state_dict()``."""

    def __init__(self) -> None:
        self.meshes: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.meshes)

    def start_for(self, idx: torch.Tensor, max_steps: int) -> WarmStart | bool:
        """The warm start of the probe rows ``idx`` (the grid for rows without a usable mesh); ``True`` when no row
        has one (a cold call that leaves meshes)."""
        rows = [int(i) for i in idx]
        meshes = [self.meshes.get(i) for i in rows]
        meshes = [m if m is not None and len(m) <= max_steps else None for m in meshes]
        if all(m is None for m in meshes):
            return True
        grid = _GRID if max_steps >= len(_GRID) else torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
        meshes = [grid if m is None else m for m in meshes]
        owner = torch.cat([torch.full((len(m),), k, dtype=torch.long) for k, m in enumerate(meshes)])
        return WarmStart(owner, torch.cat(meshes), len(rows))

    def update(self, idx: torch.Tensor, warm: WarmStart | None) -> None:
        """Keep the meshes a call on the probe rows ``idx`` left (its result's ``warm_start``)."""
        if warm is None:
            return
        owner, alpha = warm.owner.cpu(), warm.alpha.detach().cpu().to(torch.float64)
        counts = torch.bincount(owner, minlength=warm.n).tolist()
        for row, mesh in zip((int(i) for i in idx), torch.split(alpha, counts)):
            self.meshes[row] = mesh.clone()

    def share(self, trainer: Any) -> None:
        """Every process's meshes to every process (a collective: all processes call it after a check)."""
        if trainer.world_size <= 1:
            return
        device = trainer.strategy.root_device
        rows = sorted(self.meshes)
        flat = torch.cat([torch.stack([torch.full_like(self.meshes[r], r), self.meshes[r]]) for r in rows], 1) \
            if rows else torch.zeros((2, 0), dtype=torch.float64)
        length = int(trainer.strategy.reduce(torch.tensor(flat.shape[1], device=device), reduce_op="max"))
        padded = torch.full((2, length), -1.0, dtype=torch.float64)
        padded[:, :flat.shape[1]] = flat
        gathered = trainer.strategy.all_gather(padded.to(device)).cpu().reshape(-1, 2, length)
        merged: dict[int, torch.Tensor] = {}
        for part in gathered:
            part = part[:, part[0] >= 0]
            for row in part[0].unique().tolist():
                merged[int(row)] = part[1, part[0] == row]
        self.meshes = {row: mesh.clone() for row, mesh in merged.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"meshes": {row: mesh.clone() for row, mesh in self.meshes.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Meshes that are not a mesh the bisection makes are dropped (those rows start cold)."""
        self.meshes = {}
        for row, mesh in (state_dict.get("meshes") or {}).items():
            mesh = torch.as_tensor(mesh, dtype=torch.float64)
            try:
                WarmStart(torch.zeros(len(mesh), dtype=torch.long), mesh, 1).validate(1)
            except ValueError:
                continue
            self.meshes[int(row)] = mesh
