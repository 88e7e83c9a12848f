"""The GPU figures in one prepared run (issue 16): throughput, bf16, warm starts, memory and the FSDP test on CUDA.

Run from the repository root on a CUDA machine::

    python -m benchmarks.bench_gpu [--rounds 10] [--out DIR]      # not yet run on a GPU: its time there is unknown
    python -m benchmarks.bench_gpu --quick --device cpu            # tiny configs: checks the script itself

On a ResNet-50-size CNN (``transformers``' ``ResNetConfig()``, 224x224, random init) and a BERT-base-size encoder
(``BertConfig()``, 128 tokens, attributed at its word embeddings), every row is measured side by side in one run:

1. **Throughput** at equal points (a probe of 16, 50 Gauss-Legendre points, 128 points per forward): ours, captum,
   and ``raw`` (the plain chunked forward+backward of the same points), as ratios.
2. **bf16**: ours under ``torch.autocast(bfloat16)`` against float32, time and the attributions' relative L2
   difference.
3. **Warm starts**: three ``n_steps="auto"`` checks on a model nudged between them, cold and warm, wall time and
   rounds per check.
4. **Memory**: ``benchmarks.bench_memory --device cuda`` (a check's peak over a training step's, probes 16 and 64).
5. **FSDP**: ``tests/integration/test_fsdp.py`` (skips without CUDA).

Without ``--quick`` the models are full size; ``--out DIR`` also writes the numbers as JSON there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.bench_engine import time_rounds
from ig_lightning import integrated_gradients, quadrature_rule

PROBE, N_STEPS, CHUNK, CLASSES = 16, 50, 128, 10
ROOT = Path(__file__).resolve().parents[1]


class Logits(nn.Module):
    """A Hugging Face model as ``inputs -> logits``."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if mask is None else {"attention_mask": mask}
        return self.model(**{self.key: x}, **extra).logits


def resnet(quick: bool) -> tuple[nn.Module, torch.Tensor]:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_labels=CLASSES) if not quick else \
        ResNetConfig(num_labels=CLASSES, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    side = 32 if quick else 224
    x = torch.rand(PROBE, 3, side, side, generator=torch.Generator().manual_seed(0))
    return Logits(ResNetForImageClassification(config), "pixel_values"), x


def bert(quick: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(num_labels=CLASSES) if not quick else \
        BertConfig(num_labels=CLASSES, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    length = 16 if quick else 128
    ids = torch.randint(1, config.vocab_size, (PROBE, length), generator=torch.Generator().manual_seed(0))
    return Logits(BertForSequenceClassification(config), "input_ids"), ids, torch.ones_like(ids)


def raw_inputs(model: nn.Module, x: torch.Tensor, target: torch.Tensor, alphas, weights) -> torch.Tensor:
    """The floor: the chunked forward+backward of every point, weighted (zero baseline)."""
    points = (alphas.view(-1, *(1,) * x.ndim) * x.unsqueeze(0)).reshape(-1, *x.shape[1:])
    grads = []
    for k in range(0, len(points), CHUNK):
        p = points[k:k + CHUNK].requires_grad_(True)
        sel = model(p).gather(1, target.repeat(N_STEPS)[k:k + CHUNK].view(-1, 1))
        grads.append(torch.autograd.grad(sel.sum(), p)[0])
    return x * (torch.cat(grads).view(N_STEPS, *x.shape) * weights.view(-1, *(1,) * x.ndim)).sum(0)


def raw_embeddings(model: Logits, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, alphas,
                   weights) -> torch.Tensor:
    """The floor at the word embeddings: the path between the pad token's embeddings and the input's."""
    embed = model.model.bert.embeddings.word_embeddings
    with torch.no_grad():
        end, start = embed(ids), embed(torch.zeros_like(ids))
    diff = end - start
    points = (start.unsqueeze(0) + alphas.view(-1, 1, 1, 1) * diff.unsqueeze(0)).reshape(-1, *end.shape[1:])
    grads = []
    for k in range(0, len(points), CHUNK):
        p = points[k:k + CHUNK].requires_grad_(True)
        m = mask.repeat(N_STEPS, 1)[k:k + CHUNK]
        sel = model.model(inputs_embeds=p, attention_mask=m).logits.gather(1, target.repeat(N_STEPS)[k:k + CHUNK, None])
        grads.append(torch.autograd.grad(sel.sum(), p)[0])
    return diff * (torch.cat(grads).view(N_STEPS, *end.shape) * weights.view(-1, 1, 1, 1)).sum(0)


def frozen(model: nn.Module, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        model.requires_grad_(False)
        try:
            return fn()
        finally:
            model.requires_grad_(True)
    return run


def throughput(name: str, model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, args, sync) -> dict:
    """ours, captum and raw at equal points; the attributions must agree before anything is timed."""
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    target = torch.randint(0, CLASSES, (PROBE,), generator=torch.Generator().manual_seed(1)).to(args.device)
    rule = quadrature_rule("gausslegendre", N_STEPS, device=x.device)
    if mask is None:
        fns = {"ours": lambda: integrated_gradients(model, x, target=target, n_steps=N_STEPS,
                                                    internal_batch_size=CHUNK).attributions,
               "captum": lambda: IntegratedGradients(model).attribute(x, target=target, n_steps=N_STEPS,
                                                                      internal_batch_size=CHUNK),
               "raw": frozen(model, lambda: raw_inputs(model, x, target, *rule))}
    else:
        embed = model.model.bert.embeddings.word_embeddings
        fns = {"ours": lambda: integrated_gradients(model, x, target=target, n_steps=N_STEPS, layer=embed,
                                                    baselines=0, additional_forward_args=(mask,),
                                                    internal_batch_size=CHUNK).attributions,
               "captum": lambda: LayerIntegratedGradients(model, embed).attribute(
                   x, baselines=torch.zeros_like(x), target=target, n_steps=N_STEPS, additional_forward_args=(mask,),
                   internal_batch_size=CHUNK),
               "raw": frozen(model, lambda: raw_embeddings(model, x, mask, target, *rule))}
    ours = fns["ours"]()
    for other in ("captum", "raw"):
        got = fns[other]()
        diff = float((got.float() - ours.float()).norm() / ours.float().norm())
        if diff > 1e-3:
            raise RuntimeError(f"{name}: ours and {other} disagree (relative L2 {diff:.2e})")
    times = time_rounds(fns, args.rounds, 1, sync)
    med = {k: statistics.median(v) for k, v in times.items()}
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        start = time.perf_counter()
        half = fns["ours"]()
        sync()
        bf16_s = time.perf_counter() - start
    bf16_err = float((half.float() - ours.float()).norm() / ours.float().norm())
    row = {"ours_s": med["ours"], "ours/raw": med["ours"] / med["raw"], "ours/captum": med["ours"] / med["captum"],
           "bf16/fp32": bf16_s / med["ours"], "bf16 rel L2": bf16_err}
    print(f"{name:<10} ours {med['ours']:.3f} s  ours/raw {row['ours/raw']:.2f}x  ours/captum {row['ours/captum']:.2f}x"
          f"  bf16/fp32 {row['bf16/fp32']:.2f}x (rel L2 {bf16_err:.1e})", flush=True)
    return row


def warm_vs_cold(name: str, model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, args, sync) -> dict:
    """Three auto checks on a model nudged between them: cold and warm wall time and rounds per check."""
    target = torch.randint(0, CLASSES, (PROBE,), generator=torch.Generator().manual_seed(1)).to(args.device)
    kw: dict[str, Any] = dict(target=target, n_steps="auto", internal_batch_size=CHUNK)
    if mask is not None:
        kw.update(layer=model.model.bert.embeddings.word_embeddings, baselines=0, additional_forward_args=(mask,))
    rows, warm = [], True
    generator = torch.Generator(device=x.device).manual_seed(2)
    for check in range(3):
        timed = {}
        for label in ("cold", "warm"):
            sync()
            start = time.perf_counter()
            res = integrated_gradients(model, x, **kw, **({"warm_start": warm} if label == "warm" else {}))
            sync()
            timed[label] = (time.perf_counter() - start, res.rounds, float(res.n_evaluations.double().mean()))
            if label == "warm":
                warm = res.warm_start
        rows.append(timed)
        print(f"{name:<10} check {check + 1}: cold {timed['cold'][0]:.2f} s, {timed['cold'][1]} rounds, "
              f"{timed['cold'][2]:.1f} evals | warm {timed['warm'][0]:.2f} s, {timed['warm'][1]} rounds, "
              f"{timed['warm'][2]:.1f} evals", flush=True)
        with torch.no_grad():  # the next check: the weights moved a little
            for p in model.parameters():
                p.add_(torch.randn(p.shape, device=p.device, generator=generator) * 1e-3 * p.std().nan_to_num())
    return {"checks": rows}


def run_script(argv: list[str], timeout: int = 900) -> str:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return (proc.stdout[-4000:] + proc.stderr[-2000:]) if proc.returncode else proc.stdout[-4000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny configs, 2 rounds: checks the script")
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "fsdp"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.rounds = 2
    warnings.simplefilter("ignore")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{time.strftime('%Y-%m-%d')} on {name}, torch {torch.__version__}; probe {PROBE}, {N_STEPS} GL points, "
          f"{CHUNK} points per forward", flush=True)
    torch.manual_seed(0)
    figures: dict[str, Any] = {"device": name}
    image_model, images = resnet(args.quick)
    text_model, ids, mask = bert(args.quick)
    models = {"ResNet-50": (image_model.to(device).eval(), images.to(device), None),
              "BERT-base": (text_model.to(device).eval(), ids.to(device), mask.to(device))}
    for label, (model, x, m) in models.items():
        figures[label] = throughput(label, model, x, m, args, sync)
        figures[label]["warm"] = warm_vs_cold(label, model, x, m, args, sync)
    if "memory" not in args.skip:
        figures["memory"] = run_script(["-m", "benchmarks.bench_memory", "--device", args.device, "--probes", "16",
                                        "64", "--jobs", "1"])
        print(figures["memory"], flush=True)
    if "fsdp" not in args.skip:
        figures["fsdp"] = run_script(["-m", "pytest", "-q", "tests/integration/test_fsdp.py", "-p", "no:cacheprovider"])
        print(figures["fsdp"], flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_figures.json").write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
