"""LeGrad (Bousselham et al., 2024) for vision transformers: for each explained block, the
class score read from that block's tokens (the model's final norm and head applied to their
mean, torch-cam's, or to the class token with ``pool=token``) is differentiated with respect
to the block's attention probabilities; the positive part of that gradient, averaged over
heads and queries, is each key token's relevance, the class token dropped. Several blocks:
their maps summed (LeGrad's mean over layers), then normalised.

Defined for torchvision's ``VisionTransformer``: a layer names a block (or any module in
one) whose ``self_attention`` is a batch-first ``nn.MultiheadAttention``; the model's
``encoder.ln`` and ``heads`` score each block's tokens. The attention is asked for its
per-head probabilities and its output is recomputed from them (torch-cam's way), so the
output the model returns is the same up to rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import VistoolError
from ._base import CamMethod, Param


def _block(net: nn.Module, name: str) -> str:
    """The block that holds layer ``name`` (itself or its nearest ancestor with a
    ``self_attention``)."""
    parts = name.split(".")
    for end in range(len(parts), -1, -1):
        candidate = ".".join(parts[:end])
        attention = getattr(net.get_submodule(candidate), "self_attention", None)
        if isinstance(attention, nn.MultiheadAttention):
            if not attention.batch_first or not attention._qkv_same_embed_dim:
                raise VistoolError(f"legrad needs a batch-first self-attention with one "
                                   f"input projection; {candidate!r}'s is not")
            return candidate
    raise VistoolError(f"legrad explains transformer blocks with a self_attention "
                       f"(nn.MultiheadAttention, as torchvision's VisionTransformer has); layer "
                       f"{name!r} is in none: pick an encoder block ('vistool layers' lists them)")


def _asked(module, args, kwargs, asked: dict, block: str):
    """Before the attention runs: ask it for per-head probabilities (remembering what the
    block asked for) and make its input a graph root when nothing before it is in one."""
    args = list(args)
    query = args[0]
    if len(args) < 3 or not (query is args[1] is args[2]):
        raise VistoolError(f"legrad explains self-attention; {block!r} attends to another "
                           "input")
    if not query.requires_grad:
        query = query.detach().requires_grad_()
        args[:3] = [query] * 3
    positions = {"need_weights": 4, "average_attn_weights": 6}
    asked[block] = {key: bool(args[i] if len(args) > i else kwargs.get(key, True))
                    for key, i in positions.items()}
    kwargs = dict(kwargs)
    for key, value in (("need_weights", True), ("average_attn_weights", False)):
        if len(args) > positions[key]:
            args[positions[key]] = value
        else:
            kwargs[key] = value
    return tuple(args), kwargs


def _replayed(module, args, _kwargs, output, asked: dict, store: dict, block: str):
    """After it: the output recomputed from the probabilities, which are kept (the
    probabilities the attention returns are not otherwise on the output's path)."""
    probs, value = output[1], args[2]
    n, t, d = value.shape
    bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * d:]
    values = F.linear(value, module.in_proj_weight[2 * d:], bias)
    values = values.reshape(n, t, module.num_heads, d // module.num_heads).transpose(1, 2)
    out = module.out_proj((probs @ values).transpose(1, 2).reshape(n, probs.shape[2], d))
    store[block] = probs
    wanted = asked[block]
    weights = (probs.mean(1) if wanted["average_attn_weights"] else probs) \
        if wanted["need_weights"] else None
    return out, weights


@contextlib.contextmanager
def _capture(net: nn.Module, layers: list[str]) -> Iterator[dict]:
    """Each block's attention probabilities and output tokens, in the graph. Its input
    projection's weight asks for a gradient meanwhile (none is computed): a frozen weight
    makes ``F.linear`` of the attention's transposed (tokens, batch, dim) input a batched
    product with the weight broadcast over the tokens instead of one matrix product (on
    the CPU, vit_b_16: a third of LeGrad's time)."""
    blocks = {name: _block(net, name) for name in layers}
    captured = {"blocks": blocks, "probs": {}, "tokens": {}}
    asked, handles = {}, []
    weights = [net.get_submodule(b).self_attention.in_proj_weight
               for b in dict.fromkeys(blocks.values())]
    frozen = [w.requires_grad for w in weights]
    try:
        for weight in weights:
            weight.requires_grad_(True)
        for block in dict.fromkeys(blocks.values()):
            module = net.get_submodule(block)
            handles += [
                module.self_attention.register_forward_pre_hook(
                    partial(_asked, asked=asked, block=block), with_kwargs=True),
                module.self_attention.register_forward_hook(
                    partial(_replayed, asked=asked, store=captured["probs"], block=block),
                    with_kwargs=True),
                module.register_forward_hook(
                    lambda _m, _i, out, block=block: captured["tokens"].__setitem__(block, out))]
        yield captured
    finally:
        for weight, flag in zip(weights, frozen):
            weight.requires_grad_(flag)
        for handle in handles:
            handle.remove()


def _projection(net: nn.Module):
    norm, heads = getattr(getattr(net, "encoder", None), "ln", None), getattr(net, "heads", None)
    if not isinstance(norm, nn.Module) or not isinstance(heads, nn.Module):
        raise VistoolError("legrad reads each block's class scores through the model's final "
                           "norm and head (torchvision's VisionTransformer: encoder.ln, heads); "
                           "this model has neither")
    return lambda tokens: heads(norm(tokens))


def _maps(ctx) -> dict[str, torch.Tensor]:
    captured, project = ctx.captured, _projection(ctx.net)
    out = {}
    for name in ctx.layers:
        view = ctx.views[name]
        if getattr(view, "layout", None) != "tokens":
            raise VistoolError(f"legrad's layer {name!r} must output tokens (N, T, D); "
                               f"it outputs {tuple(ctx.acts[name].shape)}")
        block = captured["blocks"][name]
        tokens, probs = captured["tokens"][block], captured["probs"][block]
        pooled = tokens.mean(1) if ctx.options["pool"] == "mean" else tokens[:, 0]
        scores = project(pooled).gather(1, ctx.index)  # (N, k)
        maps = []
        for j in range(scores.shape[1]):
            (grad,) = torch.autograd.grad(scores[:, j].sum(), probs, retain_graph=True)
            relevance = grad.clamp_min(0).mean((1, 2))  # (N, keys)
            maps.append(view.to_grid(relevance[..., None]))  # (N, 1, h, w)
        out[name] = torch.cat(maps, 1)
    return out


METHOD = CamMethod(
    "legrad", _maps, "vision transformers: the positive gradient of each block's class score "
    "with respect to its attention probabilities, averaged over heads and queries",
    gradients=True, class_target=True, fuse="sum", hooks=_capture,
    forwards="none (one backward per block and class, through that block alone)",
    params={"pool": Param("mean", "how a block's tokens are read by the head: their mean "
                                  "(torch-cam's) or the class token (the model's own)",
                          choices=("mean", "token"))},
    reference="torchcam.methods.LeGrad (tests/test_cam_peers.py)")
