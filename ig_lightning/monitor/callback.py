"""The Lightning callback: Integrated Gradients on a fixed probe batch, at validation epochs, within a time budget.

Data flows one way: the probe (``probe``) -> the checks before training (``preflight``) -> a check: the
attribution (``explainer``), then its ``stages`` -> the breach ``policy`` and rank-zero pictures (``report``).
This module holds the hooks, the skip predicate and the checkpoint state; ``settings`` and ``config`` validate.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Literal, TypeVar

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from ig_lightning.functional.integrated_gradients import IGResult
from ig_lightning.functional.rule_tests import Rule
from ig_lightning.monitor import preflight
from ig_lightning.monitor._isolation import eval_mode, preserved_rng
from ig_lightning.monitor.budget import CheckProgress, OverheadBudget
from ig_lightning.monitor.config import DELTA_FLOOR, MonitorConfig
from ig_lightning.monitor.explainer import Explainer
from ig_lightning.monitor.meshes import PathMeshes
from ig_lightning.monitor.moved import regroup
from ig_lightning.monitor.policy import AttributionDriftError, BreachPolicy
from ig_lightning.monitor.probe import ModelInputs, Probe
from ig_lightning.monitor.settings import Alarm, Display, Faithfulness, Inputs, Integration, RuleExtraction
from ig_lightning.monitor.rule_stage import RuleTests, untested_rules
from ig_lightning.monitor.stages import Check, Rules, log_scalars, make_stages
from ig_lightning.monitor.targets import resolve_targets
from ig_lightning.output.report import Reporter, logger_step
from ig_lightning.output.views import CheckRecord, make_view

__all__ = ["AttributionDriftError", "IntegratedGradientsMonitor"]

S = TypeVar("S")


class IntegratedGradientsMonitor(Callback):
    r"""Integrated Gradients on a fixed probe batch at validation epochs (within ``max_overhead``), logged and watched.

    Each check attributes the model's output on the probe (taken once, kept fixed), then runs its stages
    (``ig_lightning.monitor.stages``): completeness, drift and its alarm, rules, the deletion check, pictures.
    Scalars go through ``pl_module.log`` (``EarlyStopping`` can watch them, with ``strict=False`` for those absent
    at the first checks), pictures and per-class rules to every logger; a breach can warn, stop or fail the run.
    Training is untouched: no parameter ``.grad``, buffer, module mode or global random stream changes. Arguments
    are validated here; what needs the model and the data is validated when ``fit`` starts, before the first
    training step, by running the probe through the model once.

    Args:
        probe: An int ``N`` (examples of the first validation dataset, see ``inputs.probe_selection``), the model's
            inputs (a Tensor, a tuple of positional Tensors, a dict of keyword Tensors such as a Hugging Face
            batch), or an ``(inputs, labels)`` pair (two positional inputs: ``((x1, x2), labels or None)``).
        target: ``"auto"`` (the label if the probe has class labels, else the prediction), ``"label"``,
            ``"prediction"`` (at the first check, then fixed), an int, a callable ``(outputs, labels) ->
            LongTensor (B,)`` of class indices (called at the first check), or ``"positive_labels"``: with
            multi-hot labels ``(B, C)``, one probe row per (example, positive label), explaining that label.
            One-hot labels are read through their argmax. Ignored with one output per example.
        baseline: ``"auto"``: images from black and white (the probe's smallest and largest value, averaged),
            anything else from zeros (token id 0 with ``layer``). ``None`` (zeros), a number, a Tensor broadcastable
            to the attributed input (a tuple/dict of those for several), a list of several baselines averaged,
            ``"blur"``, ``"uniform"``, ``"gaussian"``, ``"data"`` (drawn, ``integration.baseline_samples`` each), or
            ``"special_tokens"`` (token ids at a ``layer``, a tokenizer as ``display.vocabulary``): the probe's
            special tokens kept, every other token the pad token. See ``docs/trust.md``.
        layer: A submodule's name (``named_modules()``, e.g. ``"model.bert.embeddings.word_embeddings"``) to
            attribute at its output; a convolution's or patch embedding's output is drawn as a map over the image.
        n_steps: ``"auto"`` (refine each example until its estimated relative L2 error, logged as
            ``ig/attribution_error``, and its completeness error are within ``integration.tolerance``) or a fixed
            number of points of ``integration.method``.
        output_transform: ``"softmax"``, ``"log_softmax"``, ``"sigmoid"``, or a callable of the raw output.
        every_n_epochs: Check every ``n`` epochs.
        max_overhead: A budget for the monitor: its largest share of the run's wall time (default 5%). Checks are
            spaced (on top of ``every_n_epochs``) so that the time the training thread spends in them stays within
            it, estimating a check's cost by the last one's; the first check is never skipped, every rank checks on
            the same epochs, and ``ig/overhead`` logs the share. A check costs a few hundred training steps of a
            small model (``benchmarks/README.md``): in a short run, 5% allows few checks. ``None``: check every
            ``every_n_epochs``, whatever it costs.
        name: Several monitors in one trainer need distinct names: keys become ``ig/<name>/...``, the rules file
            ``ig_rules_<name>.jsonl``.
        inputs: ``Inputs``: which inputs are attributed, how a batch is unpacked, how an int probe is taken.
        integration: ``Integration``: the quadrature rule, its tolerance and cost, warm starts, autocast.
        alarm: ``Alarm``: drift, the thresholds, ``warmup``, ``patience`` and ``on_breach``.
        rule_extraction: ``RuleExtraction``: the per-class rules.
        faithfulness: ``Faithfulness``: the deletion check.
        display: ``Display``: pictures, and the names of tokens, features and classes.
        **moved: The flat arguments of 0.1 (``drift_threshold=...``), put in their place with a FutureWarning.

    A settings argument takes its object, a dict of its fields (a YAML mapping in LightningCLI), or ``None``.

    Raises:
        ValueError: an argument with a bad value (named by its path, e.g. ``alarm.factor``).
        TypeError: an argument of the wrong type.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from ig_lightning.monitor.settings import Alarm
        >>> monitor = IntegratedGradientsMonitor(probe=16, alarm=Alarm(threshold="auto", on_breach="stop"))
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False,
        ...                   enable_model_summary=False, enable_checkpointing=False)
    """

    #: Draw and write pictures on a worker thread (``None``: ``display.background`` where it exists, else True).
    draw_in_background: bool | None = None

    def __init__(
        self,
        probe: int | torch.Tensor | tuple | dict = 16,
        *,
        target: Literal["auto", "label", "prediction", "positive_labels"] | int
        | Callable[[torch.Tensor, Any], torch.Tensor] = "auto",
        baseline: float | torch.Tensor | list | tuple | dict | str | None = "auto",
        layer: str | None = None,
        n_steps: int | Literal["auto"] = "auto",
        output_transform: Literal["softmax", "log_softmax", "sigmoid"] | Callable[[Any], torch.Tensor]
        | None = None,
        every_n_epochs: int = 1,
        max_overhead: float | None = 0.05,
        name: str | None = None,
        inputs: Inputs | None = None,
        integration: Integration | None = None,
        alarm: Alarm | None = None,
        rule_extraction: RuleExtraction | None = None,
        faithfulness: Faithfulness | None = None,
        display: Display | None = None,
        **moved: Any,
    ) -> None:
        groups = regroup(moved, {"inputs": inputs, "integration": integration, "alarm": alarm,
                                 "rule_extraction": rule_extraction, "faithfulness": faithfulness, "display": display})
        self.config = MonitorConfig(probe=probe, target=target, baseline=baseline, layer=layer, n_steps=n_steps,
                                    output_transform=output_transform, every_n_epochs=every_n_epochs,
                                    max_overhead=max_overhead, name=name,
                                    **groups)
        alarm = self.config.alarm
        self.policy = BreachPolicy({}, alarm.warmup, alarm.patience, alarm.on_breach, None, alarm.patience_window)
        # Progress (in the checkpoint).
        self.probe: Probe | None = self.config.given_probe
        self.targets: torch.Tensor | None = None
        self.stages, self.meshes = make_stages(self.config), PathMeshes()
        self.budget = OverheadBudget(self.config.max_overhead)
        self.checks, self._single_output = 0, False
        self._model_fingerprint: str | None = None
        # Per run, not saved.
        self.last_result: IGResult | None = None
        self.last_metrics: dict[str, float] = {}
        #: Seconds of the last check on the training thread, by part: ``attribution``, each stage, ``pictures``.
        self.last_timings: dict[str, float] = {}
        self._layer_module: nn.Module | None = None
        self._explainer: Explainer | None = None
        self._reporter: Reporter | None = None
        self._loggers: list[Any] = []
        self._batch, self._kind = None, None
        self._model_ref: Callable[[], Any] | None = None
        self._zeros_before = False  # resumed from a 0.1 checkpoint made with zeros, under baseline="auto"

    def __getattr__(self, name: str) -> Any:
        """The arguments, read as plain attributes (``monitor.n_steps``, ``monitor.alarm``), as Lightning's
        callbacks have them."""
        config = self.__dict__.get("config")
        if config is not None and name in config.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self.config.state_key_parts())

    def stage(self, kind: type[S]) -> S | None:
        """This monitor's stage of class ``kind`` (``monitor.stage(Drift).references``), ``None`` if it has none."""
        return next((s for s in self.stages if isinstance(s, kind)), None)

    @property
    def probe_inputs(self) -> torch.Tensor | ModelInputs | None:
        """The probe's inputs: a Tensor for a model with one positional input, else the ``ModelInputs``."""
        if self.probe is None:
            return None
        inputs = self.probe.inputs
        return inputs.args[0] if len(inputs.args) == 1 and not inputs.kwargs else inputs

    @property
    def rules(self) -> dict[int, list[Rule]]:
        """Each class's rules at the last check, ranked: tested statements (``rule_extraction.test``), else its
        top features by summed attribution over the probe, untested."""
        tests = self.stage(RuleTests)
        return tests.rules if tests is not None else untested_rules(self.top_features, self._kind)

    @property
    def top_features(self) -> dict[int, list[tuple[int, float]]]:
        """Each class's top ``(feature or token id, summed attribution)`` over the probe at the last check."""
        return self.stage(Rules).tracker.rules

    @property
    def rules_history(self) -> list[dict[str, Any]]:
        """The rules and their changes at every check of this run."""
        tests = self.stage(RuleTests)
        return tests.history if tests is not None else self.stage(Rules).tracker.history

    # --- setup: everything that can be validated before training --------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._layer_module = preflight.find_layer(pl_module, self.config.layer)
        fingerprint = preflight.model_fingerprint(pl_module)
        previous = self._model_ref() if self._model_ref is not None else None
        if (previous is not None and previous is not pl_module) or \
                (self._model_fingerprint is not None and self._model_fingerprint != fingerprint):
            rank_zero_warn("IntegratedGradientsMonitor: this monitor was used with another model; its probe targets, "
                           "references and rules are dropped and taken anew (use one monitor per model)")
            self._reset_progress()
        self._model_fingerprint, self._model_ref = fingerprint, weakref.ref(pl_module)
        preflight.validate_names_unique(self, [cb for cb in trainer.callbacks if isinstance(cb, type(self))])
        self._loggers = list(trainer.loggers)

    def _reset_progress(self) -> None:
        self.probe, self.targets, self.checks, self._single_output = self.config.given_probe, None, 0, False
        self.stages, self.policy.recent, self._explainer, self.meshes = make_stages(self.config), [], None, PathMeshes()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.budget.begin()
        if preflight.will_check(trainer, pl_module, self.config.every_n_epochs):
            self._prepare(trainer, pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "fit" and not trainer.sanity_checking:
            self.budget.begin()
            self._prepare(trainer, pl_module)

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Take the probe and validate it against the model once, before any training step (no gradients)."""
        if self._explainer is not None:
            return
        config = self.config
        with preserved_rng(pl_module.device):
            self.probe = self.probe or preflight.take_probe_from(trainer, self.config)
            if config.target == "positive_labels" and not self.probe.pairs:
                self.probe = self.probe.positive_pairs()  # one row per (example, positive label)
            self._batch = preflight.points_per_forward(trainer, config.integration.internal_batch_size,
                                                       len(self.probe))
            baseline = preflight.resolve_baseline(config, self.probe, trainer)
            if self._zeros_before and baseline is not None:
                rank_zero_warn("IntegratedGradientsMonitor: the checkpoint's monitor attributed from zeros (the "
                               "default of 0.1); baseline='auto' attributes these images from black and white, so its "
                               "drift references are taken anew (pass baseline=None to keep zeros)")
                self.stages = make_stages(config)
            self._zeros_before = False
            self._explainer = Explainer(self.probe.inputs, config.inputs.attribute, self._layer_module, config.layer,
                                        config.output_transform, baseline, preflight.resolve_noise(config, self.probe),
                                        config.integration.noise_type)
            self._kind = preflight.validate(config, self.probe, self._explainer, pl_module, self._batch)
            for stage in self.stages:
                stage.prepare(trainer, pl_module, self.probe, self._explainer, self._kind, self._batch,
                              self._layer_module)
        if self._reporter is not None:
            self._reporter.close()  # the previous reporter's pictures are written before a new one starts
        background = self.draw_in_background
        if background is None:
            background = getattr(config.display, "background", True)
        self._reporter = Reporter(self._loggers, config.display.log_images, make_view(self._kind, config.display),
                                  config.prefix, config.rules_file, background=bool(background))

    # --- when to check -----------------------------------------------------------------------------

    def _should_skip_check(self, trainer: Trainer) -> bool:
        # The sanity check runs on an untrained model and on a few batches: not a real check.
        if trainer.sanity_checking:
            return True
        # trainer.validate: always check.
        if trainer.state.fn != "fit":
            return False
        # Inside fit: every n-th epoch, counted like Lightning's check_val_every_n_epoch.
        return (trainer.current_epoch + 1) % self.config.every_n_epochs != 0

    def _within_budget(self, trainer: Trainer) -> bool:
        """Whether ``max_overhead`` allows this check: rank zero's decision, the same on every rank."""
        if self.config.max_overhead is None or trainer.state.fn != "fit":
            return True
        allowed = self.budget.allows(first=self.checks == 0)
        if trainer.world_size > 1:
            allowed = bool(trainer.strategy.broadcast(allowed, src=0))
        if not allowed:
            self.budget.skipped += 1
            if self.budget.skipped == 1:
                rank_zero_info(f"IntegratedGradientsMonitor: max_overhead={self.config.max_overhead} skips the check "
                               f"of epoch {trainer.current_epoch}: the monitor took {self.budget.share():.1%} of the "
                               "run so far, and checks are spaced to stay within it (`ig/overhead`). Set a larger "
                               "max_overhead for more checks, or max_overhead=None to check every epoch (said once)")
        return allowed

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._should_skip_check(trainer) or not self._within_budget(trainer):
            return
        started = self.budget.clock()
        self._prepare(trainer, pl_module)
        with preserved_rng(pl_module.device):
            record, breaches = self._run_check(trainer, pl_module, started)
        self._explainer.pass_on_notes()
        drawing = time.perf_counter()
        if trainer.is_global_zero:  # pictures and files: rank zero only, and never fatal
            self._reporter.write(record)
        self.last_timings["pictures"] = time.perf_counter() - drawing
        self.budget.add(self.budget.clock() - started)
        self.policy.act(trainer, breaches)

    # --- pictures drawn and written on the reporter's worker thread: waited for at the end ---------------

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._reporter is not None:
            self._reporter.flush()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._reporter is not None:  # before the loggers are finalized: the pending checks are written
            self._reporter.close()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._reporter is not None:  # the end of fit, validate, test, predict
            self._reporter.close()

    # --- the check ---------------------------------------------------------------------------------

    def _run_check(self, trainer: Trainer, pl_module: LightningModule,
                   started: float) -> tuple[CheckRecord, list[str]]:
        """Attribute the probe once, then run every stage on the check; log its scalars, return what to draw and
        what it breaches. Each part's time goes to ``last_timings``; a long check shows its progress."""
        progress = CheckProgress(trainer, self.config.prefix)
        self._ensure_targets(trainer, pl_module)
        clock = time.perf_counter()
        result = self._attribute(trainer, pl_module, progress)
        timings = {"attribution": time.perf_counter() - clock}
        check = Check(trainer, pl_module, self.probe, self._explainer, result, self.targets, self._batch, self.checks,
                      self._kind)
        for stage in self.stages:
            progress(type(stage).__name__)
            clock = time.perf_counter()
            stage.update(check)
            timings[type(stage).__name__] = time.perf_counter() - clock
        progress.done()
        self.last_timings = timings
        share = self.budget.share(self.budget.clock() - started)
        if trainer.world_size > 1:  # rank zero's clock, so that every rank logs and decides the same
            share = float(trainer.strategy.broadcast(share, src=0))
        check.metrics[f"{self.config.prefix}/overhead"] = share
        log_scalars(trainer, pl_module, check.metrics)
        self.checks += 1
        self.last_result, self.last_metrics = check.result, check.metrics
        breaches = self.policy.find(check.metrics, self.checks, check.epoch, check.faults, check.limits,
                                    check.descriptions)
        return check.to_record(logger_step(trainer), self.config.prefix), breaches

    def _ensure_targets(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fix the explained output per probe example (once), identically on every process."""
        if self.targets is not None or self._single_output:
            return
        outputs, _ = self._explainer.outputs(pl_module, self.probe.inputs, self._batch)
        targets = resolve_targets(self.config.target, outputs, self.probe.labels)
        self.targets = trainer.strategy.broadcast(targets, src=0)
        self._single_output = self.targets is None

    def _attribute(self, trainer: Trainer, pl_module: LightningModule, progress: Callable[[str], None]) -> IGResult:
        config, integration = self.config, self.config.integration
        precision = trainer.precision_plugin.forward_context() if integration.autocast else \
            torch.autocast(pl_module.device.type, enabled=False)
        with eval_mode(pl_module), precision:
            return self._explainer.attribute(
                trainer, pl_module, self.probe.inputs, self.targets, self.meshes if integration.warm_start else None,
                progress=progress,
                n_steps=config.n_steps, method=integration.method, internal_batch_size=self._batch,
                tolerance=integration.tolerance, max_steps=integration.max_steps, delta_floor=DELTA_FLOOR)

    # --- checkpoint ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self.config.identity(), "model": self._model_fingerprint,
                "probe": None if self.probe is None else self.probe.state(), "targets": self.targets,
                "single_output": self._single_output, "checks": self.checks, **self.policy.state_dict(),
                **self.meshes.state_dict(), **self.budget.state_dict(),
                **{k: v for stage in self.stages for k, v in stage.state_dict().items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, current = state_dict.get("settings"), self.config.identity()
        changed = sorted(k for k in (saved or {}) if saved[k] != current.get(k))  # keys new since: no change
        # 0.1 attributed from zeros by default; "auto" still does for all but images: decided when it is resolved.
        self._zeros_before = "baseline" in changed and saved["baseline"] == "None" and self.config.baseline == "auto"
        if self._zeros_before:
            changed.remove("baseline")
        if changed:
            rank_zero_warn(f"IntegratedGradientsMonitor: the checkpoint's monitor had other settings ({changed}); "
                           "its probe, targets and references are not used and are taken anew")
            return
        probe = state_dict.get("probe", state_dict.get("probe_inputs"))
        if probe is not None:
            self.probe = Probe.from_state(probe, state_dict.get("probe_labels"))
        if state_dict.get("targets") is not None:
            self.targets = state_dict["targets"]
        for part in (*self.stages, self.policy, self.meshes, self.budget):
            part.load_state_dict(state_dict)
        self._single_output = bool(state_dict.get("single_output", False))
        self._model_fingerprint = state_dict.get("model", self._model_fingerprint)
        self.checks = state_dict.get("checks", self.checks)
        self._explainer = None  # validated again against the model before the next check
