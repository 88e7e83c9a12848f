"""Run by test_alarm_ddp.py as ``python alarm_ddp_worker.py MODE OUT_DIR``: the calibrated alarm under DDP (gloo,
2 CPU processes). Lightning re-launches this script for rank 1."""

import torch
from alarm_helpers import fit_with_change
from conftest import worker_main

from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.monitor.stages import Drift


def main(mode: str, out: str) -> None:
    if mode == "multilabel":  # (example, positive label) pairs are sharded like examples
        from test_model_shapes import MultiLabel, multi_hot_loaders

        from conftest import trainer

        torch.manual_seed(0)
        monitor = IntegratedGradientsMonitor(probe=6, n_steps=8, target="positive_labels")
        t = trainer(out, [monitor], strategy="ddp", devices=2, accelerator="cpu")
        t.validate(MultiLabel(), multi_hot_loaders()[1], verbose=False)
        torch.save({"attributions": monitor.last_result.attributions, "targets": monitor.targets,
                    "indices": monitor.probe.indices}, f"{out}/multilabel_rank{t.global_rank}.pt")
        return
    if mode == "warm":  # warm_start=True: meshes shared by the ranks, rounds in lockstep, next to a cold monitor
        from conftest import Net, data_loaders, trainer

        torch.manual_seed(0)
        common = dict(probe=8, baseline=None, display=dict(log_images=False), faithfulness=dict(deletion=False))
        cold = IntegratedGradientsMonitor(name="cold", integration=dict(tolerance=1e-3), **common)
        warm = IntegratedGradientsMonitor(name="warm", integration=dict(tolerance=1e-3, warm_start=True), **common)
        seen = []
        from lightning.pytorch import Callback

        class Record(Callback):  # after both monitors: Lightning calls the callbacks in order
            def on_validation_epoch_end(self, trainer, pl_module):
                seen.append({"cold": cold.last_result.rounds, "warm": warm.last_result.rounds,
                             "cold_attr": cold.last_result.attributions, "warm_attr": warm.last_result.attributions})

        t = trainer(out, [cold, warm, Record()], strategy="ddp", devices=2, accelerator="cpu", max_epochs=3,
                    num_sanity_val_steps=0)
        t.fit(Net(), *data_loaders())
        torch.save({"seen": seen, "meshes": warm.meshes.meshes, "state": warm.state_dict()["meshes"]},
                   f"{out}/warm_rank{t.global_rank}.pt")
        return
    on_breach = "stop" if mode == "stop" else "warn"
    monitor = IntegratedGradientsMonitor(probe=8, n_steps=8, alarm=dict(threshold="auto", on_breach=on_breach))
    t, recorder = fit_with_change(out, monitor, epochs=7, change_at=5, strategy="ddp", devices=2, accelerator="cpu")
    torch.save({"epoch": t.current_epoch, "ratios": [m.get("ig/drift_ratio") for m in recorder.metrics],
                "indices": monitor.probe.indices, "history": monitor.stage(Drift).history.values},
               f"{out}/alarm_rank{t.global_rank}.pt")


if __name__ == "__main__":
    worker_main(main)
