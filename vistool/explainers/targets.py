"""Targets for models that are not classifiers: what :func:`~vistool.explain` explains
when ``targets=`` is one of these (a callable: the model output in, one score per image
out).

* :class:`SegmentationTarget`: a class's summed score over a region of a segmentation
  model's output (pytorch-grad-cam's ``SemanticSegmentationTarget``); the region is the
  pixels the model assigns to the class (:meth:`SegmentationTarget.predicted`), a box or
  a mask.
* :class:`SimilarityTarget`: the cosine similarity of each image's embedding to a
  reference image's or a concept's (pytorch-grad-cam's ``SimilarityToConceptTarget``).

A target with a ``capture(net)`` context manager has it entered around the forward pass
(for what the output does not hold: an embedding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import TargetError
from ..core.layers import resolve_layers
from ..core.state import preserved_state

__all__ = ["SegmentationTarget", "SimilarityTarget", "main_output"]


def main_output(output) -> torch.Tensor:
    """The tensor a model output holds its scores in: the output itself, or torchvision's
    segmentation dict's ``"out"`` (``"aux"``, the auxiliary head's, is not explained)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("out"), torch.Tensor):
        return output["out"]
    raise TargetError(f"the model returned {type(output).__name__}, not a tensor or a dict "
                      "with 'out'; wrap it so that it returns its scores as one tensor")


class SegmentationTarget:
    """The score of ``category`` summed over a region of each image, for a segmentation
    model's per-pixel scores (N, classes, H, W) (or its dict's ``"out"``).

    Args:
        category: the class index, or one per image (N,).
        mask: the region, at the output's resolution: (H, W) for every image or (N, H, W),
            boolean or weights (a tensor or an array); or a box ``(x0, y0, x1, y1)`` in
            output pixels (x1, y1 excluded). :meth:`predicted` makes the mask of the pixels
            the model assigns to the class.

    Raises:
        TargetError: a box outside the output, a mask of another size, a category the
            output does not have (when called).
    """

    def __init__(self, category: int | Sequence[int] | torch.Tensor,
                 mask: torch.Tensor | np.ndarray | Sequence[int]):
        self.category = torch.as_tensor(category, dtype=torch.long).reshape(-1)
        if isinstance(mask, (torch.Tensor, np.ndarray)):
            self.mask, self.box = torch.as_tensor(mask), None
        else:
            box = tuple(int(v) for v in mask)
            if len(box) != 4 or box[0] >= box[2] or box[1] >= box[3] or min(box) < 0:
                raise TargetError(f"region {box} is not a box x0,y0,x1,y1 with x0 < x1 and "
                                  "y0 < y1, all at least 0")
            self.mask, self.box = None, box

    @classmethod
    def predicted(cls, output, category: int | Sequence[int] | torch.Tensor
                  ) -> SegmentationTarget:
        """The target over the pixels whose highest score is ``category``'s (one for all
        images or one per image) in ``output`` (the model's output for the images to
        explain), one mask per image."""
        scores = main_output(output).detach()
        target = cls(category, (0, 0, 1, 1))
        index = target._categories(scores)
        target.mask, target.box = scores.argmax(1) == index.to(scores.device)[:, None, None], None
        return target

    def _categories(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) the category of each image of ``scores`` (N, classes, H, W), checked."""
        n, classes = scores.shape[:2]
        if self.category.numel() not in (1, n):
            raise TargetError(f"got {self.category.numel()} categories for {n} images; give "
                              "one, or one per image")
        bad = self.category[(self.category < 0) | (self.category >= classes)]
        if bad.numel():
            raise TargetError(f"class index {int(bad[0])} is out of range; the model has "
                              f"{classes} classes (0..{classes - 1})")
        return self.category.expand(n)

    def region(self, shape: Sequence[int]) -> torch.Tensor:
        """The mask (N or 1, H, W) as float for an output of ``shape`` (N, classes, H, W)."""
        n, _, h, w = shape
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x1 > w or y1 > h:
                raise TargetError(f"region {self.box} reaches outside the {w}x{h} output; "
                                  f"keep x1 <= {w} and y1 <= {h}")
            mask = torch.zeros(1, h, w)
            mask[:, y0:y1, x0:x1] = 1
            return mask
        mask = self.mask.float()
        mask = mask[None] if mask.dim() == 2 else mask
        if mask.dim() != 3 or mask.shape[1:] != (h, w) or mask.shape[0] not in (1, n):
            raise TargetError(f"the mask has shape {tuple(self.mask.shape)}, the output is "
                              f"{w}x{h} for {n} image(s); give (H, W) or (N, H, W) = "
                              f"({n}, {h}, {w})")
        return mask

    def __call__(self, output) -> torch.Tensor:
        scores = main_output(output)
        if scores.dim() != 4:
            raise TargetError(f"a segmentation target needs per-pixel scores (N, classes, H, "
                              f"W); the model output has shape {tuple(scores.shape)}")
        index = self._categories(scores).to(scores.device)
        mask = self.region(scores.shape).to(scores.device, scores.dtype)
        chosen = scores[torch.arange(len(index), device=scores.device), index]  # (N, H, W)
        return (chosen * mask).sum((1, 2))

    def __repr__(self) -> str:
        where = f"box {self.box}" if self.box is not None else (
            f"mask {tuple(self.mask.shape)}")
        return f"SegmentationTarget(category={self.category.tolist()}, {where})"


class SimilarityTarget:
    """The cosine similarity of each image's embedding to ``reference`` (D,): "why is this
    image similar to that one?" (pytorch-grad-cam's ``SimilarityToConceptTarget``).

    Args:
        reference: the embedding to compare with (:meth:`of_images` makes it from images:
            one reference image's, or the mean of a folder of concept images).
        layer: where the embedding is taken: that layer's output (a spatial output is
            averaged over its positions; other outputs are flattened). None: the input of
            the model's last ``nn.Linear`` (the classifier head's input: for a ResNet the
            pooled features).

    Raises:
        TargetError: a model without a linear layer and no ``layer``; an embedding of
            another size than ``reference``; the target called outside :func:`explain`.
    """

    def __init__(self, reference: torch.Tensor, layer: str | None = None):
        self.reference, self.layer = reference.detach().reshape(-1), layer
        self._embedding: torch.Tensor | None = None

    @classmethod
    def of_images(cls, model: nn.Module, images: torch.Tensor,
                  layer: str | None = None) -> SimilarityTarget:
        """The target whose reference is the mean embedding of ``images`` (preprocessed
        (N, C, H, W)) in ``model`` (a module or a loaded model; evaluated in eval mode,
        without gradients, its state kept)."""
        net = getattr(model, "model", model)
        target = cls(torch.zeros(0), layer)
        with preserved_state(net, eval_mode=True), torch.no_grad(), target.capture(net):
            net(images)
            embedding = target._pooled()
        target.reference = embedding.mean(0)
        return target

    @contextlib.contextmanager
    def capture(self, net: nn.Module) -> Iterator[None]:
        """Within the block, each forward pass of ``net`` keeps its embedding (in the
        autograd graph) for the call that scores it."""
        def keep(_module, args, output=None):
            self._embedding = args[0] if output is None else output

        if self.layer is None:
            linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise TargetError("the model has no linear layer whose input is its embedding; "
                                  "give the embedding's layer (`layer=`)")
            handle = linears[-1].register_forward_pre_hook(keep)
        else:
            (module,) = resolve_layers(net, [self.layer])
            handle = module.register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()
            self._embedding = None

    def _pooled(self) -> torch.Tensor:
        if self._embedding is None:
            raise TargetError("a similarity target scores the embedding of explain()'s "
                              "forward pass; give it to explain(targets=...)")
        emb = self._embedding
        return (emb.mean((2, 3)) if emb.dim() == 4 else emb.flatten(1)).float()

    def __call__(self, _output) -> torch.Tensor:
        emb = self._pooled()
        if emb.shape[1] != self.reference.numel():
            raise TargetError(f"the embedding has {emb.shape[1]} values, the reference "
                              f"{self.reference.numel()}; make both at the same layer")
        return F.cosine_similarity(emb, self.reference.to(emb)[None], dim=1)

    def __repr__(self) -> str:
        return (f"SimilarityTarget({self.reference.numel()} values, layer="
                f"{self.layer or 'the head input'})")
