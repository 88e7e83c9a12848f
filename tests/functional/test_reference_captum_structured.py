"""Reference test for structured inputs and captum's other options: our engine against captum 0.9.

Covers what ``tests/test_reference_captum.py`` does not: tuple inputs with tuple baselines,
``additional_forward_args`` (per-example tensors, plain objects, both, with an ``internal_batch_size``
that cuts examples' points apart), ``multiply_by_inputs=False``, layers with tuple outputs, layer
inputs, lists of layers, token ids with an integer mask, models returning tuples / dicts / Hugging
Face-style output objects, ``grad_kwargs``, and int / per-example targets.

One parametrized tester (torchmetrics style): each case builds a small float64 model with a fixed seed;
both libraries get the same model, inputs, baselines, extras, target, ``n_steps`` and rule; the
attributions (same structure: Tensor, tuple or list) and captum's convergence delta (``sum(attributions) -
(F(x) - F(x'))``, our ``completeness_error``) are compared, and a failure prints both values.

Tolerances: both sides compute in float64, but captum rounds its alphas and step sizes to float32
(~6e-8 relative), so results differ at that level, not at float64 rounding. Attributions are compared
with ``rtol=1e-6`` (and ``atol=1e-9`` for the entries near zero). The completeness error is a
cancellation (``sum(attributions) - delta``, both O(1)): an absolute difference of a few 1e-8 from the
float32 weights survives it (3e-8 at most here), so it is compared with ``atol=1e-7``. Still tight:
scaling every quadrature weight by ``1 + 1e-5`` fails nearly every case, an extra argument given to the
wrong example fails every case that has one.

``riemann_trapezoid`` is not compared: captum's trapezoid step sizes add up to ``1 - 1/n``. Its property
(exact completeness on an affine model, over several inputs) is tested instead, without captum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from torch import nn

from ig_lightning import integrated_gradients

RTOL, ATOL = 1e-6, 1e-9  # attributions: float32-rounded alphas/steps in captum, see the module docstring
DELTA_ATOL = 1e-7  # completeness error: a cancellation of O(1) terms, see the module docstring
BATCH, N_CLASSES, N_STEPS = 4, 3, 7
VOCAB, SEQ_LEN = 20, 5
COMPARED_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "gausslegendre")
ALL_METHODS = (*COMPARED_METHODS, "riemann_trapezoid")


# ----------------------------------------------------------------------------------------------- models


def _apply_extras(out: torch.Tensor, extras: tuple) -> torch.Tensor:
    """Extras by type: a Tensor ``(B,)`` scales its example, a str picks a squashing, a number divides."""
    for extra in extras:
        if isinstance(extra, torch.Tensor):
            out = out * extra.view(-1, 1).to(out.dtype)  # fails loudly if its rows do not follow the examples
        elif isinstance(extra, str):
            if extra not in ("tanh", "identity"):
                raise ValueError(f"unknown mode {extra!r}")
            out = torch.tanh(out) if extra == "tanh" else out
        else:
            out = out / extra
    return out


class ImageVector(nn.Module):
    """An image ``(B, 1, 5, 5)`` and a vector ``(B, 4)``, optionally a third input ``(B, 3)``, then extras."""

    def __init__(self, third: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.vec = nn.Linear(4, 6)
        self.third = nn.Linear(3, 6) if third else None
        self.head = nn.Linear(2 * 3 * 3 + 6, N_CLASSES)

    def forward(self, img: torch.Tensor, vec: torch.Tensor, *rest: Any) -> torch.Tensor:
        h = torch.tanh(self.vec(vec))
        if self.third is not None:
            z, *rest = rest
            h = h * torch.sigmoid(self.third(z))
        out = self.head(torch.cat([torch.tanh(self.conv(img)).flatten(1), h], 1))
        return _apply_extras(out, tuple(rest))


class TwoBranch(nn.Module):
    """``x -> (left, right)`` (siblings) ``-> Bilinear(left, right)`` (two inputs) ``-> head`` (non-linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Linear(5, 6), nn.Linear(5, 6)
        self.mix = nn.Bilinear(6, 6, 4)
        self.head = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, N_CLASSES))

    def forward(self, x: torch.Tensor, *extras: Any) -> torch.Tensor:
        a, b = torch.tanh(self.left(x)), torch.relu(self.right(x))
        return _apply_extras(self.head(torch.tanh(self.mix(a, b))), extras)


class Split(nn.Module):
    """Returns a tuple of two tensors of different widths."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 4), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.a(x)), self.b(x)


class Merge(nn.Module):
    """Consumes :class:`Split`'s tuple."""

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        a, b = pair
        return torch.cat([a, torch.relu(b)], 1)


class TupleLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.split, self.merge, self.head = Split(), Merge(), nn.Linear(7, N_CLASSES)

    def forward(self, x: torch.Tensor, *extras: Any) -> torch.Tensor:
        return _apply_extras(self.head(self.merge(self.split(x))), extras)


class MaskedEmbedding(nn.Module):
    """Token ids ``(B, T)`` and an int attention mask ``(B, T)``: masked mean of embeddings -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 6)
        self.head = nn.Linear(6, N_CLASSES)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(self.head.weight.dtype)
        pooled = (self.embedding(ids) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(torch.tanh(pooled))


@dataclass
class Output:
    """A ``ModelOutput``-like object: the tensor to explain is ``.logits``."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None


def _hf_output(logits: torch.Tensor) -> Any:
    """``transformers``' ``SequenceClassifierOutput`` if importable, else the small dataclass."""
    try:
        from transformers.modeling_outputs import SequenceClassifierOutput
    except ImportError:
        return Output(logits)
    return SequenceClassifierOutput(logits=logits)


class Wrapped(nn.Module):
    """``inner``'s logits inside a tuple, a list, a dict, an output object; or something unusable."""

    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, *args: Any) -> Any:
        out = self.inner(*args)
        return {
            "tuple": lambda: (out, out.detach() * 0),
            "list": lambda: [out],
            "dict": lambda: {"hidden": out.detach(), "logits": out},
            "dataclass": lambda: Output(logits=out, hidden=out.detach()),
            "hf": lambda: _hf_output(out),
            "str": lambda: "logits",
            "dict_without_logits": lambda: {"scores": out},
        }[self.kind]()


# ------------------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    """What both libraries get. ``baselines`` is ours; captum's takes no None inside a tuple and no single
    number for several inputs (spelled out for it)."""

    model: nn.Module
    inputs: torch.Tensor | tuple[torch.Tensor, ...]
    baselines: Any = None
    target: int | torch.Tensor | None = None
    extras: Any = None
    internal_batch_size: int | None = None
    layer: nn.Module | list[nn.Module] | None = None
    attribute_to_layer_input: bool = False
    multiply_by_inputs: bool = True
    grad_kwargs: dict[str, Any] | None = None
    captum_model: nn.Module | None = None  # what captum explains when ``model`` wraps its outputs
    inputs_bypass_layer: bool = False  # some input reaches the output without passing through ``layer``
    captum_baselines: Any = field(default=None)

    def __post_init__(self) -> None:
        bases = self.baselines
        if isinstance(self.inputs, tuple) and not isinstance(bases, tuple) and bases is not None:
            bases = (bases,) * len(self.inputs)  # captum takes no single number for several inputs
        self.captum_baselines = tuple(0 if b is None else b for b in bases) if isinstance(bases, tuple) else bases


PER_EXAMPLE = torch.arange(BATCH) % N_CLASSES  # a per-example target
SCALE = torch.tensor([1.5, -0.5, 0.0, 2.0], dtype=torch.float64)  # a per-example extra (one example is zeroed)
MASK = (torch.arange(SEQ_LEN).view(1, -1) < torch.tensor([5, 3, 4, 2]).view(-1, 1)).long()  # int, padded at the end


def _image_vector() -> tuple[nn.Module, tuple[torch.Tensor, ...], tuple[Any, ...]]:
    """Two inputs; baselines: a number and a Tensor that broadcasts (one row for every example)."""
    torch.manual_seed(0)
    model = ImageVector().double().eval()
    x = (torch.rand(BATCH, 1, 5, 5, dtype=torch.float64), torch.randn(BATCH, 4, dtype=torch.float64))
    return model, x, (0.1, 0.3 * torch.randn(1, 4, dtype=torch.float64))


def _image_vector3() -> tuple[nn.Module, tuple[torch.Tensor, ...], tuple[Any, ...]]:
    """Three inputs; baselines: None (zeros), a number and a full Tensor."""
    torch.manual_seed(0)
    model = ImageVector(third=True).double().eval()
    x = (torch.rand(BATCH, 1, 5, 5), torch.randn(BATCH, 4), torch.randn(BATCH, 3))
    return model, tuple(t.double() for t in x), (None, 0.25, 0.1 * torch.randn(BATCH, 3, dtype=torch.float64))


def _two_branch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = TwoBranch().double().eval()
    return model, torch.randn(BATCH, 5, dtype=torch.float64), 0.2 * torch.randn(BATCH, 5, dtype=torch.float64)


def _tuple_layer() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    model = TupleLayer().double().eval()
    return model, torch.randn(BATCH, 5, dtype=torch.float64), 0.2 * torch.randn(BATCH, 5, dtype=torch.float64)


def _tokens() -> tuple[nn.Module, torch.Tensor, int]:
    """Token ids, and token id 0 as the baseline."""
    torch.manual_seed(3)
    return MaskedEmbedding().double().eval(), torch.randint(1, VOCAB, (BATCH, SEQ_LEN)), 0


def _case(build: Callable[[], tuple], layer: str | list[str] | None = None, wrap: str | None = None,
          **kwargs: Any) -> Callable[[], Case]:
    """A case maker: ``build()``'s model, inputs and baselines, ``layer`` by attribute name(s), ``kwargs``.

    ``wrap`` puts the model's logits in a tuple / dict / output object; captum explains the bare model.
    """

    def make() -> Case:
        model, x, baselines = build()
        names = [layer] if isinstance(layer, str) else layer
        layers = None if names is None else [getattr(model, name) for name in names]
        return Case(
            Wrapped(model, wrap).eval() if wrap else model, x,
            layer=layers[0] if isinstance(layer, str) else layers,
            captum_model=model if wrap else None,
            **{"baselines": baselines, **kwargs},
        )

    return make


CASES: dict[str, Callable[[], Case]] = {
    # Tuple inputs, tuple baselines (None / number / Tensor), int and per-example targets.
    "tuple2_int_target": _case(_image_vector, target=1),
    "tuple2_tensor_target": _case(_image_vector, target=PER_EXAMPLE),
    "tuple3_tensor_target": _case(_image_vector3, target=PER_EXAMPLE),
    "tuple3_int_target_batched": _case(_image_vector3, target=2, internal_batch_size=10),
    "tuple2_one_number_for_all": _case(_image_vector, baselines=0.1, target=0),
    # additional_forward_args: a per-example tensor, plain objects, both. internal_batch_size=10 for
    # 7 points x 4 examples cuts the points of an example apart (not a divisor of 28); 3 < BATCH
    # cuts the examples of one alpha apart (ours only: captum raises it to BATCH).
    "extras_tensor": _case(_image_vector, target=PER_EXAMPLE, extras=SCALE),
    "extras_tensor_batched": _case(_image_vector, target=PER_EXAMPLE, extras=(SCALE,), internal_batch_size=10),
    "extras_tensor_batched_lt_batch": _case(_image_vector, target=PER_EXAMPLE, extras=(SCALE,), internal_batch_size=3),
    "extras_float": _case(_image_vector, target=PER_EXAMPLE, extras=0.5),
    "extras_str": _case(_image_vector, target=PER_EXAMPLE, extras=("tanh",)),
    "extras_all_batched": _case(_image_vector, target=PER_EXAMPLE, extras=(SCALE, 0.5, "tanh"), internal_batch_size=10),
    "extras_third_input_batched": _case(_image_vector3, target=1, extras=(SCALE, "tanh"), internal_batch_size=9),
    # multiply_by_inputs=False.
    "no_multiply_tuple": _case(_image_vector, target=PER_EXAMPLE, extras=(SCALE,), multiply_by_inputs=False,
                               internal_batch_size=10),
    "no_multiply_layer": _case(_tokens, "embedding", target=PER_EXAMPLE, extras=MASK, multiply_by_inputs=False),
    # Layers: a tuple output, a layer's input (one tensor, two positional tensors), two sibling layers,
    # an embedding on token ids with an int mask.
    "layer_tuple_output": _case(_tuple_layer, "split", target=PER_EXAMPLE),
    "layer_tuple_output_extras_batched": _case(_tuple_layer, "split", target=2, extras=(SCALE, "tanh"),
                                               internal_batch_size=10),
    "layer_input_one_tensor": _case(_two_branch, "head", target=PER_EXAMPLE, attribute_to_layer_input=True),
    "layer_input_two_tensors": _case(_two_branch, "mix", target=PER_EXAMPLE, extras=SCALE,
                                     attribute_to_layer_input=True, internal_batch_size=10),
    "layer_list_siblings": _case(_two_branch, ["left", "right"], target=PER_EXAMPLE),
    "layer_list_siblings_extras_batched": _case(_two_branch, ["left", "right"], target=1, extras=(SCALE, 2.0),
                                                internal_batch_size=10),
    "embedding_int_mask": _case(_tokens, "embedding", target=PER_EXAMPLE, extras=MASK),
    "embedding_int_mask_batched": _case(_tokens, "embedding", target=2, extras=(MASK,), internal_batch_size=6),
    "embedding_int_mask_batched_lt_batch": _case(_tokens, "embedding", target=PER_EXAMPLE, extras=(MASK,),
                                                 internal_batch_size=3),
    # grad_kwargs (captum 0.9 takes it on LayerIntegratedGradients.attribute only).
    "layer_grad_kwargs": _case(_two_branch, ["left", "right"], target=PER_EXAMPLE, grad_kwargs={"retain_graph": True}),
    # Model outputs: captum explains the bare tensor model.
    "output_tuple": _case(_image_vector, wrap="tuple", target=PER_EXAMPLE),
    "output_list": _case(_image_vector, wrap="list", target=PER_EXAMPLE),
    "output_dict": _case(_image_vector, wrap="dict", target=PER_EXAMPLE, extras=SCALE, internal_batch_size=10),
    "output_dataclass": _case(_image_vector, wrap="dataclass", target=PER_EXAMPLE),
    "output_hf": _case(_image_vector, wrap="hf", target=PER_EXAMPLE),
    # The image bypasses the layer: the deltas differ by design (see the tester).
    "output_dict_layer": _case(_image_vector, "vec", wrap="dict", target=PER_EXAMPLE, inputs_bypass_layer=True),
}


# ----------------------------------------------------------------------------------------------- tester


def _run_ours(case: Case, method: str) -> Any:
    return integrated_gradients(
        case.model,
        case.inputs,
        target=case.target,
        baselines=case.baselines,
        additional_forward_args=case.extras,
        n_steps=N_STEPS,
        method=method,
        internal_batch_size=case.internal_batch_size,
        layer=case.layer,
        attribute_to_layer_input=case.attribute_to_layer_input,
        multiply_by_inputs=case.multiply_by_inputs,
        grad_kwargs=case.grad_kwargs,
    )


def _run_captum(case: Case, method: str, multiply_by_inputs: bool) -> tuple[Any, torch.Tensor]:
    """captum's attributions and convergence delta, ``sum(attributions) - (F(x) - F(x'))``."""
    model = case.captum_model if case.captum_model is not None else case.model
    if case.layer is None:
        explainer = IntegratedGradients(model, multiply_by_inputs=multiply_by_inputs)
        layer_kwargs: dict[str, Any] = {}
    else:
        explainer = LayerIntegratedGradients(model, case.layer, multiply_by_inputs=multiply_by_inputs)
        layer_kwargs = dict(attribute_to_layer_input=case.attribute_to_layer_input, grad_kwargs=case.grad_kwargs)
    # captum refuses fewer points per batch than examples (it warns and takes BATCH); we slice examples.
    batch = None if case.internal_batch_size is None else max(case.internal_batch_size, BATCH)
    return explainer.attribute(
        case.inputs,
        baselines=case.captum_baselines,
        target=case.target,
        additional_forward_args=case.extras,
        n_steps=N_STEPS,
        method=method,
        internal_batch_size=batch,
        return_convergence_delta=True,
        **layer_kwargs,
    )


def _model_delta(case: Case) -> torch.Tensor:
    """``F(x) - F(x')`` with every input at its baseline, on the bare model, as captum computes it."""
    model = case.captum_model if case.captum_model is not None else case.model
    inputs = case.inputs if isinstance(case.inputs, tuple) else (case.inputs,)
    bases = case.captum_baselines if isinstance(case.captum_baselines, tuple) else (case.captum_baselines,)
    bases = tuple(torch.zeros_like(x) if b is None else torch.broadcast_to(torch.as_tensor(b, dtype=x.dtype), x.shape)
                  for b, x in zip(bases, inputs))
    extras = case.extras if isinstance(case.extras, tuple) else () if case.extras is None else (case.extras,)
    target = torch.as_tensor(case.target).expand(BATCH).view(-1, 1)
    with torch.no_grad():
        return (model(*inputs, *extras) - model(*bases, *extras)).gather(1, target).squeeze(1)


def _assert_close(name: str, ours: Any, theirs: Any, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Same structure (Tensor / tuple / list) and close tensors; the message gives both values."""
    if isinstance(theirs, (tuple, list)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), (
            f"{name}: structure differs: ours {_describe(ours)}, captum {_describe(theirs)}"
        )
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_close(f"{name}[{i}]", a, b, rtol, atol)
        return
    assert isinstance(ours, torch.Tensor), f"{name}: ours is {_describe(ours)}, captum's a Tensor"
    assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} vs captum's {tuple(theirs.shape)}"
    theirs = theirs.detach()
    diff = (ours - theirs).abs().max().item()
    assert torch.allclose(ours, theirs, rtol=rtol, atol=atol), (
        f"{name}: max abs difference {diff:.3e}\nours:   {ours.flatten()[:12].tolist()}\n"
        f"captum: {theirs.flatten()[:12].tolist()}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}[{', '.join(_describe(v) for v in value)}]"
    return f"Tensor{tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.filterwarnings("ignore:Multiple layers provided:UserWarning")  # captum's, on sibling layers
@pytest.mark.parametrize("method", COMPARED_METHODS)
@pytest.mark.parametrize("case_name", list(CASES))
def test_matches_captum(case_name: str, method: str) -> None:
    case = CASES[case_name]()
    ours = _run_ours(case, method)
    attributions, delta = _run_captum(case, method, case.multiply_by_inputs)
    _assert_close("attributions", ours.attributions, attributions)
    if not case.multiply_by_inputs:
        # captum's delta sums its own attributions: without the inputs' factor that is no completeness,
        # while ours is always the true one, so take captum's from a run with the factor.
        _, delta = _run_captum(case, method, True)
    if case.inputs_bypass_layer:
        # captum's delta uses F(x) - F(x') with every input at its baseline; ours (and so our completeness
        # error) uses F with only the layer's output swapped, what the path integrates. Both are
        # sum(attributions) minus their own delta, so they differ by exactly the difference of the deltas.
        delta = delta + _model_delta(case) - ours.delta
    _assert_close("completeness error", ours.completeness_error, delta, atol=DELTA_ATOL)


# ------------------------------------------------------------------------- properties (no captum needed)


W_IMG = torch.linspace(-1.0, 1.0, 2 * 3, dtype=torch.float64).view(1, 2, 3)
W_VEC = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=torch.float64)


def _affine2(img: torch.Tensor, vec: torch.Tensor, *extras: Any) -> torch.Tensor:
    """Affine in both inputs (its gradient is the same everywhere); a per-example scale keeps it affine."""
    out = (img * W_IMG).flatten(1).sum(1) + vec @ W_VEC + 0.25
    return _apply_extras(out.unsqueeze(1), extras).squeeze(1)


class AffineBranches(nn.Module):
    """Two sibling linear layers and an affine head: affine in the layers' outputs too."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Linear(4, 3), nn.Linear(4, 2)
        self.head = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.left(x), self.right(x)], 1))


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("n_steps", [2, 5])
def test_completeness_is_exact_over_a_tuple_of_inputs(method: str, n_steps: int) -> None:
    # Every rule's weights add up to one (our trapezoid's too, unlike captum's), and the gradient of an
    # affine model is constant: the attributions over ALL inputs add up to F(x) - F(x') to rounding, and
    # each input's equal its closed form (x - x') * w, whatever the batching of points and extras.
    torch.manual_seed(0)
    x = (torch.randn(BATCH, 2, 3, dtype=torch.float64), torch.randn(BATCH, 4, dtype=torch.float64))
    bases = (0.5, torch.randn(1, 4, dtype=torch.float64))
    res = integrated_gradients(_affine2, x, baselines=bases, additional_forward_args=SCALE, n_steps=n_steps,
                               method=method, internal_batch_size=3)
    assert res.completeness_error.abs().max().item() < 1e-12
    scale = SCALE.view(-1, 1)
    torch.testing.assert_close(res.attributions[0], (x[0] - 0.5) * W_IMG * scale.view(-1, 1, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.attributions[1], (x[1] - bases[1]) * W_VEC * scale, rtol=0, atol=1e-12)
    # delta is the model's own difference, not the sum of the attributions.
    f_base = _affine2(torch.full_like(x[0], 0.5), bases[1].expand(BATCH, 4), SCALE)
    torch.testing.assert_close(res.delta, _affine2(*x, SCALE) - f_base, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_completeness_is_exact_over_a_list_of_layers(method: str) -> None:
    torch.manual_seed(0)
    model = AffineBranches().double()
    x, base = torch.randn(BATCH, 4, dtype=torch.float64), torch.randn(BATCH, 4, dtype=torch.float64)
    res = integrated_gradients(model, x, baselines=base, n_steps=3, method=method, layer=[model.left, model.right])
    assert res.completeness_error.abs().max().item() < 1e-12
    w = model.head.weight.detach()[0]
    torch.testing.assert_close(res.attributions[0], (model.left(x) - model.left(base)).detach() * w[:3],
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(res.attributions[1], (model.right(x) - model.right(base)).detach() * w[3:],
                               rtol=0, atol=1e-12)


def _structure(value: Any) -> Any:
    """``"T"`` for a Tensor, the same nesting of tuples and lists around it."""
    if isinstance(value, (tuple, list)):
        return type(value)(_structure(v) for v in value)
    return "T" if isinstance(value, torch.Tensor) else type(value).__name__


def test_attributions_have_the_inputs_structure() -> None:
    torch.manual_seed(0)
    vec = torch.randn(BATCH, 4)
    f = lambda *xs: sum(t.flatten(1).sum(1).double() for t in xs)  # noqa: E731
    assert _structure(integrated_gradients(f, vec, n_steps=2).attributions) == "T"
    assert _structure(integrated_gradients(f, (vec,), n_steps=2).attributions) == ("T",)
    # Three inputs of different shapes and dtypes: each attribution has its input's shape and dtype.
    xs = (torch.rand(BATCH, 1, 3, 3), vec.double(), torch.randn(BATCH, 2, dtype=torch.float16))
    attributions = integrated_gradients(f, xs, n_steps=2).attributions
    assert _structure(attributions) == ("T", "T", "T")
    assert [(a.shape, a.dtype) for a in attributions] == [(t.shape, t.dtype) for t in xs]


def test_layer_attributions_have_the_layers_structure() -> None:
    torch.manual_seed(0)
    x = torch.randn(BATCH, 5, dtype=torch.float64)
    two, tup = TwoBranch().double(), TupleLayer().double()

    def structure(model: nn.Module, layer: Any, **kwargs: Any) -> Any:
        return _structure(integrated_gradients(model, x, target=0, n_steps=2, layer=layer, **kwargs).attributions)

    assert structure(two, two.left) == "T"
    assert structure(tup, tup.split) == ("T", "T")
    assert structure(two, [two.left]) == ["T"]
    assert structure(two, [two.left, two.right]) == ["T", "T"]
    assert structure(two, [two.mix], attribute_to_layer_input=True) == [("T", "T")]
    assert structure(two, two.mix, attribute_to_layer_input=True) == ("T", "T")
    assert structure(two, two.head, attribute_to_layer_input=True) == "T"
    res = integrated_gradients(tup, x, target=0, n_steps=2, layer=tup.split)
    assert [a.shape for a in res.attributions] == [(BATCH, 4), (BATCH, 3)]


@pytest.mark.parametrize("grad_kwargs", [{}, {"retain_graph": True}], ids=["empty", "retain_graph"])
def test_grad_kwargs_that_change_nothing(grad_kwargs: dict[str, Any]) -> None:
    # captum 0.9 takes grad_kwargs on LayerIntegratedGradients only (compared above); inputs alone here.
    case = CASES["extras_all_batched"]()
    plain = integrated_gradients(case.model, case.inputs, target=case.target, baselines=case.baselines,
                                 additional_forward_args=case.extras, n_steps=N_STEPS, internal_batch_size=10)
    res = integrated_gradients(case.model, case.inputs, target=case.target, baselines=case.baselines,
                               additional_forward_args=case.extras, n_steps=N_STEPS, internal_batch_size=10,
                               grad_kwargs=grad_kwargs)
    for a, b in zip(res.attributions, plain.attributions):
        assert torch.equal(a, b)
    assert torch.equal(res.completeness_error, plain.completeness_error)


def test_baselines_tuple_of_the_wrong_length() -> None:
    model, x, _ = _image_vector()
    for bases in [(None,), (None, 0.0, 0.0)]:
        with pytest.raises(ValueError, match=rf"`baselines` must have one entry per input \(2\), got {len(bases)}"):
            integrated_gradients(model, x, baselines=bases, target=0, n_steps=2)
    with pytest.raises(TypeError, match="`baselines` must be a tuple"):  # one Tensor for two inputs: ambiguous
        integrated_gradients(model, x, baselines=torch.zeros(BATCH, 4, dtype=torch.float64), target=0, n_steps=2)


def test_extra_tensor_without_the_batch_size_is_passed_whole() -> None:
    # The rule is by shape: a Tensor whose first dimension is not B is passed as it is, at every point.
    # A per-feature constant then works (below: a weight vector of length 6 with B = 4, exact IG of a
    # linear model). A per-example tensor of the wrong length (B + 1) is passed whole too and the
    # model's own broadcasting fails with torch's RuntimeError, whose sizes are the engine's internal
    # batch (2 * B rows for F(x) and F(x') together), not B: the engine cannot tell the two intents apart.
    # (A constant whose first dimension happens to equal B would be split by example: reshape it.)
    torch.manual_seed(0)
    x, w = torch.randn(BATCH, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    res = integrated_gradients(lambda t, weight: t @ weight, x, additional_forward_args=w, n_steps=2,
                               internal_batch_size=3)
    torch.testing.assert_close(res.attributions, x * w, rtol=0, atol=1e-12)
    model, xs, bases = _image_vector()
    wrong = torch.ones(BATCH + 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="must match the size"):
        integrated_gradients(model, xs, baselines=bases, target=0, additional_forward_args=wrong, n_steps=2)


@pytest.mark.parametrize(("kind", "named"), [("str", "str"), ("dict_without_logits", "dict with keys ['scores']")])
def test_unusable_model_output(kind: str, named: str) -> None:
    model, x, bases = _image_vector()
    with pytest.raises(TypeError, match=re.escape(f"the model returned {named}")):
        integrated_gradients(Wrapped(model, kind), x, baselines=bases, target=0, n_steps=2)


class Tagger(nn.Module):
    """Returns a string, not a tensor."""

    def forward(self, x: torch.Tensor) -> str:
        return "positive" if bool(x.sum() > 0) else "negative"


class Argmax(nn.Module):
    """Returns an integer tensor: nothing to interpolate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(1)


class NonTensorLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tagger, self.argmax, self.head = Tagger(), Argmax(), nn.Linear(5, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 1.0 if self.tagger(x) == "positive" else 2.0
        return self.head(x) * factor + self.argmax(x).unsqueeze(1)


@pytest.mark.parametrize(("layer_name", "got"), [("tagger", "got str"), ("argmax", "got a torch.int64 Tensor")])
def test_layer_without_a_floating_tensor(layer_name: str, got: str) -> None:
    torch.manual_seed(0)
    model = NonTensorLayers().double()
    layer = getattr(model, layer_name)
    with pytest.raises(TypeError, match=rf"`layer` \({type(layer).__name__}\) output holds no floating point .*{got}"):
        integrated_gradients(model, torch.randn(BATCH, 5, dtype=torch.float64), target=0, n_steps=2, layer=layer)
    assert not layer._forward_hooks, "the hook must be removed after the error"
