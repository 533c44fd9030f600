"""Private, faster copies of a model for methods that run many forward passes (Score-CAM,
Ablation-CAM): the caller's model is never modified.

:func:`inference_copy` returns a copy that is

* channels-last (faster convolutions with oneDNN on CPU and tensor cores on GPU);
* with ``fuse``: batch norm folded into the preceding convolutions (``torch.fx``);
* with ``sample`` on a float32 CPU model: each convolution, together with a ReLU and a
  residual addition that follow it, is one oneDNN call with its weight packed once in the
  blocked layout oneDNN computes in (what ``torch.compile`` does on CPU with freezing, without
  the compile time). The rewritten copy is checked against the unrewritten one on ``sample``
  and dropped when they differ.

With ``keep``, the named layers stay modules of the copy under their own names, each one a
fast copy of its own: hooks on them (``vistool.hooks.record``) see the outputs they see on
the original, so a run over many batches can explain the copy instead (``vistool gradcam``
over a folder does).

Models that ``torch.fx`` cannot trace get only the channels-last copy.
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["activation_bytes", "budget_batch", "inference_copy", "many_forwards_batch"]

# glibc's largest mmap threshold: an allocation above it gets freshly mapped pages, so every
# forward pass that makes such a tensor pays a page fault per 4 KiB (measured on resnet18 at
# 224², batch 16: 25,000 faults per batch, 10-15% of the time; none at batch 8).
_FRESH_PAGES_ABOVE = 32 * 1024 * 1024
_CPU_BATCH, _GPU_BATCH = 16, 256  # default caps of many_forwards_batch

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


def inference_copy(net: nn.Module, fuse: bool, sample: torch.Tensor | None = None,
                   keep: Sequence[str] = ()) -> nn.Module:
    """A private copy of ``net`` for many forward passes (see the module docstring).

    Args:
        net: the model (not modified).
        fuse: fold batch norm into convolutions and, with ``sample``, fuse convolutions
            with their ReLU and residual addition. Only for models run in eval mode.
        sample: an input batch (one image is enough) to pack the weights for and to check
            the rewrite on; enables the oneDNN rewrite on float32 CPU models.
        keep: layer names whose outputs must stay observable: nothing around them is fused
            into them and they keep their names (not nested in one another). The rewritten
            convolutions have no gradient: explain with autograd through a copy made
            without ``sample``.
    """
    fast = None
    if fuse:
        from torch.fx.experimental.optimization import fuse as fx_fuse

        with contextlib.suppress(Exception):
            fused = fx_fuse(_traced(net, keep), no_trace=True)
            _speed_up_kept(fused, net, keep, sample)
            fast = fused
    if fast is None:
        try:
            fast = copy.deepcopy(net)
        except Exception:
            return net
    fast = fast.to(memory_format=torch.channels_last)
    if fuse and sample is not None and isinstance(fast, fx.GraphModule) and _onednn_usable(sample):
        with contextlib.suppress(Exception):
            if _onednn_rewrite(fast, sample.contiguous(memory_format=torch.channels_last)):
                return fast
        return inference_copy(net, fuse, keep=keep)  # the rewrite failed: start again
    return fast


class _Kept(nn.Module):
    """A layer kept in an inference copy: a module of its own (no neighbour is fused into
    it), computing with a fast copy of the layer."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def _traced(net: nn.Module, keep: Sequence[str]) -> nn.Module:
    """``net`` traced by ``torch.fx`` with each ``keep`` layer left as a :class:`_Kept`
    module (sharing the layer: :func:`torch.fx.experimental.optimization.fuse` copies it);
    ``net`` itself without ``keep``."""
    if not keep:
        return net
    if any(a.startswith(b + ".") for a in keep for b in keep):
        raise ValueError(f"kept layers nest in one another: {list(keep)}")

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:
            return name in keep or super().is_leaf_module(module, name)

    traced = fx.GraphModule(net, Tracer().trace(net))
    for name in keep:
        parent, _, child = name.rpartition(".")
        setattr(traced.get_submodule(parent), child, _Kept(net.get_submodule(name)))
    return traced


def _speed_up_kept(fast: nn.Module, net: nn.Module, keep: Sequence[str],
                   sample: torch.Tensor | None) -> None:
    """Replace each kept layer of ``fast`` by a fast copy of its own (packed for its input
    on ``sample``)."""
    inputs = _layer_inputs(net, keep, sample) if keep and sample is not None else {}
    for name in keep:
        kept = fast.get_submodule(name)
        kept.inner = inference_copy(kept.inner, fuse=True, sample=inputs.get(name))


def _layer_inputs(net: nn.Module, names: Sequence[str], sample: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """The first tensor input of each layer ``names`` on ``sample`` (of its first call)."""
    found: dict[str, torch.Tensor] = {}

    def hook(name):
        def capture(_module, args):
            if args and isinstance(args[0], torch.Tensor):
                found.setdefault(name, args[0])
        return capture

    handles = [net.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            net(sample)
    finally:
        for handle in handles:
            handle.remove()
    return found


def many_forwards_batch(net: nn.Module, sample: torch.Tensor, batch_size: int | None) -> int:
    """The batch size for many forward passes of ``net`` on inputs like ``sample``, at most
    ``batch_size`` (None: 16 on the CPU and MPS, 256 on CUDA). On the CPU, small enough
    that no activation exceeds 32 MiB; on CUDA, small enough that the activations of one
    batch fill at most half the device's free memory (one single-image forward pass
    measures them)."""
    free = free_device_bytes(sample.device)
    if free is not None:
        _, total = activation_bytes(net, sample)
        return max(1, min(batch_size or _GPU_BATCH, free // 2 // max(total, 1)))
    if sample.device.type != "cpu":
        return batch_size or _CPU_BATCH
    largest, _ = activation_bytes(net, sample)
    return max(1, min(batch_size or _CPU_BATCH, _FRESH_PAGES_ABOVE // largest))


def free_device_bytes(device: torch.device) -> int | None:
    """The free memory of a CUDA device in bytes (None for other devices)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    # and what torch's caching allocator holds without using it
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def budget_batch(net: nn.Module, sample: torch.Tensor, budget: int) -> tuple[int, int]:
    """The largest batch whose activations fit in ``budget`` bytes (at least 1), and the
    bytes per image: the sum of every layer's output for one image like ``sample`` (about
    what a forward pass recording autograd keeps; more than one that does not)."""
    _, total = activation_bytes(net, sample)
    return max(1, budget // max(total, 1)), total


def activation_bytes(net: nn.Module, sample: torch.Tensor) -> tuple[int, int]:
    """The largest and the summed size in bytes of the tensors the layers (modules without
    submodules) of ``net`` output on the first image of ``sample`` (one forward pass)."""
    largest, total = 1, 0

    def measure(_module, _inputs, output):
        nonlocal largest, total
        if isinstance(output, torch.Tensor):
            size = output.numel() * output.element_size()
            largest, total = max(largest, size), total + size

    handles = [module.register_forward_hook(measure) for module in net.modules()
               if next(module.children(), None) is None]
    try:
        with torch.inference_mode():
            net(sample[:1])
    finally:
        for handle in handles:
            handle.remove()
    return largest, total


def _onednn_usable(sample: torch.Tensor) -> bool:
    return (sample.device.type == "cpu" and sample.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


class _OneDnnConv(nn.Module):
    """``relu?(conv(x) [+ other])`` as one oneDNN call with a pre-packed weight."""

    def __init__(self, conv: nn.Conv2d, input_size: list[int], relu: bool, add: bool):
        super().__init__()
        self.args = ([*conv.padding], [*conv.stride], [*conv.dilation], conv.groups)
        # A plain attribute, not a buffer: the packed (opaque) tensor never moves or saves.
        self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            conv.weight.detach().to_mkldnn(), *self.args, input_size)
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.relu = relu
        self.add = add

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        pointwise = torch.ops.mkldnn._convolution_pointwise
        if self.add:
            return pointwise.binary(x, other, self.packed, self.bias, *self.args, "add", None,
                                    "relu" if self.relu else None, [], "")
        return pointwise(x, self.packed, self.bias, *self.args,
                         "relu" if self.relu else "none", [], "")


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1 and not node.kwargs
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS
            and len(node.args) == 2 and not node.kwargs)


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _conv_pattern(node: fx.Node, modules: dict[str, nn.Module]
                  ) -> tuple[list[fx.Node], fx.Node | None, bool] | None:
    """For a float32 ``nn.Conv2d`` node the oneDNN call can compute: the nodes it replaces
    (the convolution, then a residual addition and a ReLU that alone use its result), the
    addition's other operand and whether a ReLU follows; None for any other node."""
    conv = modules.get(node.target) if node.op == "call_module" else None
    if (type(conv) is not nn.Conv2d or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str) or len(node.args) != 1 or node.kwargs):
        return None
    meta = node.args[0].meta.get("tensor_meta")
    if meta is None or meta.dtype != torch.float32:
        return None
    pattern, other = [node], None
    user = _only_user(node)
    if user is not None and _is_add(user):
        candidate = user.args[1] if user.args[0] is node else user.args[0]
        other_meta = getattr(candidate, "meta", {}).get("tensor_meta")
        if (isinstance(candidate, fx.Node) and candidate is not node and other_meta
                is not None and other_meta.shape == node.meta["tensor_meta"].shape):
            pattern.append(user)
            other = candidate
            user = _only_user(user)
    relu = user is not None and _is_relu(user, modules)
    if relu:
        pattern.append(user)
    return pattern, other, relu


def _onednn_rewrite(gm: fx.GraphModule, sample: torch.Tensor) -> bool:
    """Rewrite ``gm`` in place; False when the result does not match ``gm`` as it was on
    ``sample`` (the caller then discards ``gm``)."""
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        expected = gm(sample)
        ShapeProp(gm).propagate(sample)
    modules = dict(gm.named_modules())
    graph = gm.graph
    rewritten = 0
    for node in list(graph.nodes):
        found = _conv_pattern(node, modules)
        if found is None:
            continue
        pattern, other, relu = found
        name = f"onednn_{rewritten}"
        input_size = [*node.args[0].meta["tensor_meta"].shape]
        gm.add_submodule(name, _OneDnnConv(modules[node.target], input_size, relu,
                                           other is not None))
        with graph.inserting_after(pattern[-1]):
            args = (node.args[0],) if other is None else (node.args[0], other)
            fused = graph.call_module(name, args)
        fused.meta = dict(pattern[-1].meta)
        pattern[-1].replace_all_uses_with(fused)
        for old in reversed(pattern):
            graph.erase_node(old)
        rewritten += 1
    if not rewritten:
        return True
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    with torch.no_grad():
        got = gm(sample)
    return torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
