"""Pictures drawn and written on a worker thread: the same outputs as in line, in order, a bounded queue, failures
warned once on the training thread, everything written at the end of fit, validate and on an exception, no thread
left behind, training untouched."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import pickle
import threading
import time

import pytest
import torch
from conftest import TinyCNN, caught_warnings, loaders, trainer, write_failures
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch.utils.tensorboard import SummaryWriter

from ig_lightning import IntegratedGradientsMonitor
from ig_lightning.output import writers as writers_module
from ig_lightning.output.report import Reporter
from ig_lightning.output.views import CheckRecord, ImageView
from ig_lightning.output.worker import Worker, snapshot

THREAD = "ig-lightning-pictures"


#: Scalars that measure time (the monitor's share of the run): they differ between any two runs.
TIMED = {"ig/overhead"}


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD and t.is_alive()]


def monitor(background: bool, **kw) -> IntegratedGradientsMonitor:
    m = IntegratedGradientsMonitor(probe=6, n_steps=4, display=dict(class_names=["a", "b", "c", "d"]), **kw)
    m.draw_in_background = background
    return m


def fit(root, background: bool, model=None, epochs: int = 3, **kw):
    """A seeded TinyCNN fit with a TensorBoard and a CSV logger; returns the trainer, monitor, model and loggers."""
    torch.manual_seed(0)
    model = TinyCNN() if model is None else model
    loggers = [TensorBoardLogger(root, name="tb"), CSVLogger(root, name="csv")]
    m = monitor(background)
    t = trainer(root, [m], logger=loggers, max_epochs=epochs, **kw)
    t.fit(model, *loaders())
    return t, m, model, loggers


def tensorboard_events(log_dir) -> list[tuple[str, int, bytes]]:
    """Every summary value of every event file under ``log_dir``, in file order: (tag, step, serialized value)."""
    out = []
    for name in sorted(os.listdir(log_dir)):
        if not name.startswith("events.out.tfevents"):
            continue
        for event in EventFileLoader(os.path.join(log_dir, name)).Load():
            for value in event.summary.value:
                if value.tag not in TIMED:
                    out.append((value.tag, event.step, value.SerializeToString(deterministic=True)))
    return out


def files(log_dir) -> dict[str, bytes]:
    """Every file under ``log_dir`` but TensorBoard's event files, by relative path (a CSV logger's metrics without
    the timed columns)."""
    found = {}
    for folder, _, names in os.walk(log_dir):
        for name in names:
            if not name.startswith("events.out.tfevents"):
                path = os.path.join(folder, name)
                content = open(path, "rb").read()
                if name == "metrics.csv":
                    rows = list(csv.reader(io.StringIO(content.decode())))
                    keep = [i for i, column in enumerate(rows[0]) if column not in TIMED]
                    content = "\n".join(",".join(row[i] for i in keep) for row in rows).encode()
                found[os.path.relpath(path, log_dir)] = content
    return found


# --------------------------------------------------------------------------- a real fit, with and without the worker


def test_outputs_and_training_are_identical_with_and_without_the_worker(tmp_path):
    _, inline, inline_model, (tb_a, csv_a) = fit(tmp_path / "inline", background=False)
    assert not worker_threads()
    t, worker, worker_model, (tb_b, csv_b) = fit(tmp_path / "worker", background=True)
    assert worker._reporter.background and not inline._reporter.background
    assert not worker_threads()  # joined at teardown
    # training bit-identical
    for key, value in inline_model.state_dict().items():
        assert torch.equal(value, worker_model.state_dict()[key]), key
    untimed = lambda metrics: {k: v for k, v in metrics.items() if k not in TIMED}  # noqa: E731
    assert untimed(inline.last_metrics) == untimed(worker.last_metrics) and inline.checks == worker.checks == 3
    # the same TensorBoard values at the same steps: pictures, texts, histograms (and the scalars)
    a, b = tensorboard_events(tb_a.log_dir), tensorboard_events(tb_b.log_dir)
    assert sorted(a) == sorted(b)
    tags = {tag for tag, _, _ in b}
    assert {"ig/attribution_maps", "ig/class_mean_maps", "ig/histograms/attributions"} <= tags
    assert any(tag.startswith("ig/rules") for tag in tags)
    # in order: each picture tag's steps increase through the event file
    for tag in ("ig/attribution_maps", "ig/class_mean_maps", "ig/histograms/attributions"):
        steps = [step for name, step, _ in b if name == tag]
        assert len(steps) == 3 and steps == sorted(steps) and len(set(steps)) == 3
    # the same files, byte for byte: PNGs, Markdown, CSV tables and histograms, the rules files, metrics
    for logger_a, logger_b in ((tb_a, tb_b), (csv_a, csv_b)):
        files_a, files_b = files(logger_a.log_dir), files(logger_b.log_dir)
        assert files_a.keys() == files_b.keys()
        for path in files_a:
            assert files_a[path] == files_b[path], path
    lines = open(os.path.join(tb_b.log_dir, "ig_rules.jsonl")).read().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    assert any(p.endswith(".png") for p in files(csv_b.log_dir))


def test_the_check_returns_before_the_pictures_are_drawn(tmp_path, monkeypatch):
    """The worker draws while training goes on: the training thread never runs a writer."""
    threads = []
    image = writers_module.TensorBoardWriter.image

    def record_thread(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return image(self, *args, **kwargs)

    monkeypatch.setattr(writers_module.TensorBoardWriter, "image", record_thread)
    fit(tmp_path, background=True, epochs=2)
    assert threads and set(threads) == {THREAD}


# --------------------------------------------------------------------------- failures


def test_a_writer_that_raises_warns_once_on_the_training_thread_and_later_checks_are_written(tmp_path, monkeypatch):
    calls = []

    def broken_once(self, *args, **kwargs):  # the first check's histograms fail, later ones go through
        calls.append(args[0])
        if len(calls) <= 2:
            raise RuntimeError("the logger broke")
        return add_histogram(self, *args, **kwargs)

    add_histogram = SummaryWriter.add_histogram
    monkeypatch.setattr(SummaryWriter, "add_histogram", broken_once)
    with caught_warnings() as caught:
        t, m, _, (tb, _) = fit(tmp_path, background=True)
    failures = write_failures(caught)
    assert len(failures) == 1 and "could not write TensorBoard pictures (RuntimeError: the logger broke" in failures[0]
    assert t.current_epoch == 3 and m.checks == 3 and not worker_threads()
    events = tensorboard_events(tb.log_dir)
    assert len([1 for tag, _, _ in events if tag == "ig/attribution_maps"]) == 3  # the first check's pictures too
    assert len([1 for tag, _, _ in events if tag == "ig/histograms/attributions"]) == 2  # the later checks'


def test_a_failing_job_is_warned_once_and_the_worker_goes_on():
    worker, done = Worker(maxsize=2), []

    def fail():
        raise ValueError("bad job")

    with caught_warnings() as caught:
        for i in range(4):
            worker.submit(fail)
            worker.submit(lambda i=i: done.append(i))
        worker.close()
    messages = [str(w.message) for w in caught if "bad job" in str(w.message)]
    assert done == [0, 1, 2, 3] and len(messages) == 1 and "ValueError: bad job" in messages[0]
    assert not worker.alive


def test_warnings_from_the_worker_are_issued_on_the_calling_thread():
    worker, seen = Worker(), []
    worker.submit(lambda: worker.warn("from a job"))
    original = __import__("warnings").showwarning

    def show(message, *args, **kwargs):
        seen.append((str(message), threading.current_thread() is threading.main_thread()))

    with caught_warnings():
        __import__("warnings").showwarning = show
        try:
            worker.close()
        finally:
            __import__("warnings").showwarning = original
    assert seen == [("from a job", True)]


# --------------------------------------------------------------------------- order, a bounded queue


def test_jobs_run_in_order_on_one_thread():
    worker, seen = Worker(maxsize=2), []
    for i in range(30):
        worker.submit(lambda i=i: (time.sleep(0.001 * (i % 3)), seen.append((i, threading.current_thread().name))))
    worker.close()
    assert [i for i, _ in seen] == list(range(30)) and {name for _, name in seen} == {THREAD}
    assert not worker_threads()


def test_a_slow_writer_blocks_the_producer_and_the_queue_never_exceeds_its_size():
    worker, gate, sizes = Worker(maxsize=2), threading.Event(), []
    try:
        worker.submit(gate.wait)  # the worker is busy with this one until the gate opens
        time.sleep(0.05)
        worker.submit(lambda: None)
        worker.submit(lambda: None)  # two waiting: the queue is full
        blocked = threading.Thread(target=worker.submit, args=(lambda: None,), daemon=True)
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive()  # the producer waits for room
        sizes.append(worker._queue.qsize())
    finally:
        gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    worker.close()
    assert sizes == [2] and worker._queue.unfinished_tasks == 0


def test_a_slow_disk_during_a_fit_keeps_at_most_two_checks_waiting(tmp_path, monkeypatch):
    sizes = []
    submit, image = Worker.submit, writers_module.CSVWriter.image

    def watched_submit(self, job):
        submit(self, job)
        sizes.append(self._queue.qsize())

    def slow_image(self, *args, **kwargs):
        time.sleep(0.15)
        return image(self, *args, **kwargs)

    monkeypatch.setattr(Worker, "submit", watched_submit)
    monkeypatch.setattr(writers_module.CSVWriter, "image", slow_image)
    t, m, _, (_, csv) = fit(tmp_path, background=True, epochs=5)
    assert len(sizes) == 5 and max(sizes) == 2  # full at times (the producer then waited), never more
    pngs = [p for p in files(csv.log_dir) if p.startswith(os.path.join("ig", "attribution_maps"))]
    assert len(pngs) == 5  # every check written by the end of fit


# --------------------------------------------------------------------------- flushed at the end


class FailsInSecondEpoch(TinyCNN):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise RuntimeError("training broke")
        return super().training_step(batch, batch_idx)


def test_an_exception_in_training_still_writes_the_pending_pictures(tmp_path, monkeypatch):
    image = writers_module.TensorBoardWriter.image

    def slow_image(self, *args, **kwargs):
        time.sleep(0.5)  # still drawing when training raises
        return image(self, *args, **kwargs)

    monkeypatch.setattr(writers_module.TensorBoardWriter, "image", slow_image)
    with pytest.raises(RuntimeError, match="training broke"):
        fit(tmp_path, background=True, model=FailsInSecondEpoch())
    assert not worker_threads()
    log_dir = os.path.join(tmp_path, "tb", "version_0")
    events = tensorboard_events(log_dir)
    assert [tag for tag, _, _ in events if tag in ("ig/attribution_maps", "ig/class_mean_maps")] == \
        ["ig/attribution_maps", "ig/class_mean_maps"]
    assert len(open(os.path.join(log_dir, "ig_rules.jsonl")).read().splitlines()) == 1


def test_validate_writes_its_pictures_before_it_returns(tmp_path, monkeypatch):
    image = writers_module.CSVWriter.image

    def slow_image(self, *args, **kwargs):
        time.sleep(0.3)
        return image(self, *args, **kwargs)

    monkeypatch.setattr(writers_module.CSVWriter, "image", slow_image)
    torch.manual_seed(0)
    csv = CSVLogger(tmp_path, name="csv")
    m = monitor(True)
    t = trainer(tmp_path, [m], logger=csv)
    _, val = loaders()
    t.validate(TinyCNN(), val)
    assert not worker_threads() and m.checks == 1
    assert len([p for p in files(csv.log_dir) if p.endswith(".png")]) == 2  # attribution and class-mean maps


# --------------------------------------------------------------------------- copies


def test_a_record_changed_after_it_was_handed_over_is_drawn_as_it_was(tmp_path):
    torch.manual_seed(0)
    rec = CheckRecord(1, 0, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), torch.randn(2, 1, 8, 8), torch.ones(2),
                      torch.full((2,), 0.01), rules={0: [(3, 0.5)], 1: [(4, 0.25)]})
    expected = copy.deepcopy(rec)
    runs = {}
    for background in (False, True):
        csv = CSVLogger(tmp_path / str(background), name="csv")
        reporter = Reporter([csv], True, ImageView(min_size=8), background=background)
        gate = threading.Event()
        try:
            if background:
                reporter.worker.submit(gate.wait)
            reporter.write(copy.deepcopy(expected) if not background else rec)
            if background:  # the next check would change these in place
                rec.scores.mul_(-3)
                rec.rules[0].append((9, 9.0))
        finally:
            gate.set()
        reporter.close()
        runs[background] = files(csv.log_dir)
    assert runs[False] == runs[True] and runs[True]


def test_snapshot_copies_tensors_to_the_cpu_and_containers():
    rec = CheckRecord(1, 0, torch.rand(2, 3), None, torch.rand(2, 3).expand(2, 3), torch.ones(2), torch.zeros(2),
                      rules={0: [(1, 0.5)]}, rule_events=["a"])
    copied = snapshot(rec)
    assert copied is not rec and copied.scores.data_ptr() != rec.scores.data_ptr()
    assert torch.equal(copied.scores, rec.scores) and copied.rules == rec.rules and copied.rules[0] is not rec.rules[0]
    assert copied.rule_events == ["a"] and copied.rule_events is not rec.rule_events


def test_a_monitor_and_a_started_reporter_can_be_copied_and_pickled(tmp_path):
    m = monitor(True)
    copy.deepcopy(m)
    reporter = Reporter([CSVLogger(tmp_path, name="csv")], True, ImageView(min_size=8), background=True)
    reporter.worker.submit(lambda: None)
    assert reporter.worker.alive
    for clone in (copy.deepcopy(reporter), pickle.loads(pickle.dumps(reporter))):
        assert not clone.worker.alive and clone.background
        clone.worker.submit(lambda: None)
        clone.close()
    reporter.close()
    assert not worker_threads()


def test_the_worker_draws_on_one_torch_thread_and_leaves_the_training_threads_count_alone():
    seen, before = [], torch.get_num_threads()
    torch.set_num_threads(2)  # the training thread's count: two, so that one on the worker is its own doing
    try:
        worker = Worker()
        worker.submit(lambda: seen.append(torch.get_num_threads()))
        worker.close()
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
