"""Run by tests/integration/test_ddp.py as `python tests/ddp_worker.py MODE OUT_DIR`: 2 CPU processes under DDP (gloo).

Lightning's "ddp" strategy re-launches this script for rank 1, so everything happens at import-free top level.
"""


import lightning.pytorch as pl
import torch
from conftest import TinyCNN, TokenModel, loaders, make_data, token_loaders, trainer, worker_main

from ig_lightning import IntegratedGradientsMonitor

#: The settings of the "trust" mode (tests/integration/test_ddp.py runs them in one process too).
TRUST_SETTINGS = dict(baseline="uniform", integration=dict(baseline_samples=3, noise_samples=2),
                      faithfulness=dict(sanity_every_n_checks=1, sanity_steps=2))


def main(mode: str, out: str) -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    train, val = loaders()
    kw = dict(strategy="ddp", devices=2, accelerator="cpu")
    if mode == "validate":
        monitor = IntegratedGradientsMonitor(probe=5, n_steps=16)  # 5 does not split evenly over 2 ranks
        t = trainer(out, [monitor], **kw)
        t.validate(model, val, verbose=False)
        r = monitor.last_result
        torch.save({"attributions": r.attributions, "delta": r.delta, "targets": monitor.targets,
                    "probe": monitor.probe_inputs, "metrics": monitor.last_metrics,
                    "rules": {c: [rule.to_dict() for rule in rs] for c, rs in monitor.rules.items()}},
                   f"{out}/rank{t.global_rank}.pt")
    elif mode == "trust":  # drawn baselines, noisy copies and the sanity check: the same on every rank
        monitor = IntegratedGradientsMonitor(probe=5, n_steps=16, **TRUST_SETTINGS)
        t = trainer(out, [monitor], **kw)
        t.validate(model, val, verbose=False)
        r = monitor.last_result
        torch.save({"attributions": r.attributions, "delta": r.delta, "metrics": monitor.last_metrics,
                    "weights": model.state_dict()}, f"{out}/trust_rank{t.global_rank}.pt")
    elif mode == "budget":  # max_overhead: rank 1's checks take longer, yet both ranks check on rank 0's epochs
        import time

        from ig_lightning.monitor.stages import Completeness

        update = Completeness.update

        def slow(self, check):
            time.sleep(0.4 if check.trainer.global_rank == 1 else 0.15)
            update(self, check)

        Completeness.update = slow
        monitor = IntegratedGradientsMonitor(probe=4, n_steps=4, max_overhead=0.2, rule_extraction=dict(test=False),
                                             faithfulness=dict(sanity_every_n_checks=0, curves=False))
        epochs = []

        class Record(pl.Callback):
            def on_validation_epoch_end(self, trainer, pl_module):
                if monitor.checks > len(epochs):
                    epochs.append(trainer.current_epoch)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                time.sleep(0.01)

        t = trainer(out, [monitor, Record()], max_epochs=8, **kw)
        t.fit(model, train, val)
        torch.save({"epochs": epochs, "overhead": monitor.last_metrics["ig/overhead"]},
                   f"{out}/budget_rank{t.global_rank}.pt")
    elif mode == "tokens":  # keyword inputs: ids and the mask are sharded with the probe
        torch.manual_seed(0)
        model = TokenModel()
        monitor = IntegratedGradientsMonitor(probe=5, n_steps=8, layer="embedding")
        t = trainer(out, [monitor], **kw)
        t.validate(model, token_loaders()[1], verbose=False)
        torch.save({"attributions": monitor.last_result.attributions, "delta": monitor.last_result.delta,
                    "masks": model.masks_seen}, f"{out}/tokens_rank{t.global_rank}.pt")
    elif mode == "lockstep":  # n_steps="auto": shards of different difficulty, the same forwards on each rank
        torch.manual_seed(0)
        model, calls = TinyCNN(), []
        model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])) if torch.is_grad_enabled() and
                                        not m.training else None)
        x, y = make_data()[:6]
        x[:3] = 0.0  # rank 0's shard equals the baseline: exact at the first round; rank 1's needs many
        monitor = IntegratedGradientsMonitor(probe=(x, y), n_steps="auto",
                                             integration=dict(tolerance=1e-3, internal_batch_size=4))
        t = trainer(out, [monitor], **kw)
        t.validate(model, val, verbose=False)
        torch.save({"calls": calls, "n_steps": monitor.last_result.n_steps,
                    "attributions": monitor.last_result.attributions}, f"{out}/lockstep_rank{t.global_rank}.pt")
    elif mode == "raise":
        monitor = IntegratedGradientsMonitor(probe=6, n_steps=4, alarm=dict(threshold=0.0, on_breach="raise"))
        trainer(out, [monitor], max_epochs=4, **kw).fit(model, train, val)
    elif mode == "stop":
        monitor = IntegratedGradientsMonitor(probe=6, n_steps=4, alarm=dict(threshold=0.0, on_breach="stop"))
        t = trainer(out, [monitor], max_epochs=6, **kw)
        t.fit(model, train, val)
        torch.save({"epoch": t.current_epoch}, f"{out}/stop_rank{t.global_rank}.pt")


if __name__ == "__main__":
    worker_main(main)
