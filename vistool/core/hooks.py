"""Recording layer outputs with forward hooks: the only place vistool registers hooks.

``record`` registers forward hooks on named modules inside a context manager and
removes them in ``finally``. With ``gradients=True`` the captured outputs stay in the
autograd graph, so a caller takes ``torch.autograd.grad(score, rec.outputs)``: no
backward hooks, nothing below the layers computed, no parameter ``.grad`` touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .errors import LayerError
from .layers import resolve_layers

__all__ = ["OUTPUT", "Recording", "forward_until", "record", "redirected_relus",
           "replaced_output"]


def _map_tensors(fn, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_map_tensors(fn, v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(fn, v) for v in value)
    return value


def _track(tensor: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and not tensor.requires_grad and tensor.is_floating_point():
        return tensor.detach().requires_grad_(True)
    return tensor


class Recording:
    """Outputs captured by :func:`record`, addressed by layer name.

    ``rec[name]`` is the last output of that layer, ``rec.all(name)`` every output in
    call order (a module that runs twice in one forward yields both), and
    ``rec.outputs`` the last output of each requested layer, in request order.
    """

    def __init__(self, names: Sequence[str], gradients: bool):
        self.names = list(names)
        self.gradients = gradients
        self._store: dict[str, list[Any]] = {n: [] for n in self.names}

    def __getitem__(self, name: str) -> Any:
        calls = self.all(name)
        if not calls:
            raise KeyError(f"layer {name!r} did not run in the recorded forward pass")
        return calls[-1]

    def __contains__(self, name: object) -> bool:
        return bool(self._store.get(name))  # type: ignore[arg-type]

    def all(self, name: str) -> list[Any]:
        """Every captured output of ``name``, in call order."""
        if name not in self._store:
            raise KeyError(f"layer {name!r} was not recorded; recorded: {self.names}")
        return list(self._store[name])

    @property
    def outputs(self) -> list[Any]:
        """The last output of each recorded layer, in the order the layers were asked for."""
        return [self[n] for n in self.names]

    def clear(self) -> None:
        """Forget captured outputs (hooks stay registered)."""
        for calls in self._store.values():
            calls.clear()

    def _hook(self, name: str):
        store = self._store[name]

        if self.gradients:

            def hook(_module, _inputs, output):
                # A frozen model's outputs do not require grad; make them roots of a graph.
                output = _map_tensors(_track, output)
                store.append(output)
                # Hand the rest of the network a copy: an in-place op downstream
                # (ReLU(inplace=True)) then modifies the copy, and the captured tensor keeps
                # this layer's own grad_fn.
                return _map_tensors(lambda t: t.clone() if t.requires_grad else t, output)

        else:

            def hook(_module, _inputs, output):
                store.append(_map_tensors(lambda t: t.detach().clone(), output))

        return hook


@contextlib.contextmanager
def record(
    model: nn.Module, layers: str | Sequence[str], gradients: bool = False
) -> Iterator[Recording]:
    """Record the outputs of the named layers of ``model`` during the forward passes in the block.

    Args:
        model: any ``nn.Module``.
        layers: a dotted module name (``"layer4.1.conv2"``) or a sequence of them.
        gradients: if False, outputs are detached clones (safe from later in-place ops);
            if True, they stay in the autograd graph for ``torch.autograd.grad``.

    Raises:
        LayerError: a name is not a module of ``model``; the message lists the closest names.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    modules = resolve_layers(model, names)
    rec = Recording(names, gradients)
    handles = []
    try:
        for name, module in zip(names, modules):
            handles.append(module.register_forward_hook(rec._hook(name)))
        yield rec
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def replaced_output(model: nn.Module, layer: str,
                    fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside the block, the output of ``layer`` is replaced by ``fn(output)``.

    Used to probe or ablate a layer (Ablation-CAM, closed-form head detection).
    """
    (module,) = resolve_layers(model, [layer])
    handle = module.register_forward_hook(lambda _m, _i, output: fn(output))
    try:
        yield
    finally:
        handle.remove()


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for an image to which it passes no gradient at all, lets through
    every gradient that would not push a negative input further down (lucid's redirected
    ReLU): a unit that is off everywhere can still be turned on."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        relu = torch.ops.aten.threshold_backward(grad, out, 0)  # ReLU's own backward kernel
        dead = torch.linalg.vector_norm(relu.flatten(1), float("inf"), dim=1) == 0
        if not bool(dead.any()):  # the usual case: the plain ReLU gradient
            return relu
        # ``grad`` is that of the loss (minus the objective): grad > 0 pushes the input down.
        redirected = grad.masked_fill((out <= 0) & (grad > 0), 0)
        return torch.where(dead.view(-1, *[1] * (grad.dim() - 1)), redirected, relu)


class _RedirectReLUs(torch.overrides.TorchFunctionMode):
    """Every ReLU computed while active: ``nn.ReLU`` modules, ``F.relu``, ``torch.relu``,
    ``Tensor.relu`` and their in-place forms, through :class:`_RedirectedReLU` (an in-place
    form writes the result back into its input, as it would)."""

    OUT_OF_PLACE = frozenset({torch.relu, torch.nn.functional.relu, torch.Tensor.relu})
    IN_PLACE = frozenset({torch.relu_, torch.Tensor.relu_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.OUT_OF_PLACE and func not in self.IN_PLACE:
            return func(*args, **kwargs)
        x = args[0]
        inplace = func in self.IN_PLACE or (func is torch.nn.functional.relu and bool(
            kwargs.get("inplace", args[1] if len(args) > 1 else False)))
        out = _RedirectedReLU.apply(x)
        return x.copy_(out) if inplace else out


@contextlib.contextmanager
def redirected_relus(model: nn.Module) -> Iterator[None]:
    """Inside the block every ReLU of ``model`` computes :class:`_RedirectedReLU` (the same
    values, the redirected gradient): each ``nn.ReLU`` module, out of place, by an instance
    attribute ``forward`` that shadows the class's and is removed in ``finally`` (no hook, no
    copy), and the functional forms (``F.relu``, ``torch.relu``, ``x.relu()``, in place or
    not) through a torch function mode. For a loss to minimise."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    saved = {m: m.__dict__.get("forward") for m in relus}
    for module in relus:
        module.forward = _RedirectedReLU.apply
    try:
        with _RedirectReLUs():
            yield
    finally:
        for module, previous in saved.items():
            if previous is None:
                del module.forward
            else:
                module.forward = previous


OUTPUT = "<output>"  # the model's own output, for objectives on logits


class _Reached(Exception):
    """Raised from a forward hook once every requested layer has produced its output."""


def forward_until(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str],
                  gradients: bool = True) -> dict[str, Any]:
    """Run ``model(inputs)`` only as far as needed to capture ``layers``; return their outputs.

    The forward pass stops as soon as every named layer has produced an output (the rest
    of the network, e.g. a classifier, is never computed), unless ``layers`` includes
    :data:`OUTPUT`, which asks for the model's output and runs it to the end. Outputs
    are those of :func:`record` (in the graph with ``gradients=True``). A module that
    runs twice gives its first output. Hooks are removed in ``finally``.

    Raises:
        LayerError: a name is not a module of ``model``, or a layer did not run.
    """
    names = [n for n in dict.fromkeys(layers) if n != OUTPUT]
    full = OUTPUT in layers
    captured: dict[str, Any] = {}
    with record(model, names, gradients=gradients) as rec:
        handles = []

        def stop(_module, _inputs, _output):
            if not full and all(name in rec for name in names):
                raise _Reached

        try:
            for module in resolve_layers(model, names):
                handles.append(module.register_forward_hook(stop))
            output = model(inputs)
            if full:
                captured[OUTPUT] = output
        except _Reached:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in names if name not in rec]
        if missing:
            raise LayerError(f"layer {missing[0]!r} did not run in the forward pass; pick a "
                             "layer that 'vistool layers' lists with a shape")
        captured.update({name: rec.all(name)[0] for name in names})
    return captured
