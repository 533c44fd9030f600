"""Deep Feature Factorization as a class map (:mod:`vistool.explainers.nmf`): the
layer's activations over the batch factorised into ``concepts`` concepts; a class's map is
the map of the concept the head scores highest for that class. Needs a GAP + linear head
(it scores the concepts). The concepts are shared by the batch, so an image's map depends
on the images explained with it, as in pytorch-grad-cam. ``vistool.factorize`` (and
``vistool dff``) give every concept, each drawn in its own colour."""

from ...core.errors import VistoolError
from ..nmf import factorization_of
from ._base import CamMethod, Param, per_layer


def _map(ctx, name):
    act, concepts = ctx.grid(name), ctx.options["concepts"]
    if concepts > act.shape[1]:
        raise VistoolError(f"dff's option concepts ({concepts}) must be at most the layer's "
                           f"{act.shape[1]} channels")
    found = factorization_of(act, concepts, ctx.heads[name])
    best = found.scores.argmax(0)  # (classes,): the concept scored highest for each class
    chosen = best[ctx.index]  # (N, k)
    return found.raw.gather(1, chosen[..., None, None].expand(-1, -1, *act.shape[2:]))


METHOD = CamMethod(
    "dff", per_layer(_map), "the map of the NMF concept of the batch that scores the class "
    "highest", head="require", class_target=True, forwards="none (an NMF of the batch's "
    "activations)", params={"concepts": Param(5, "how many concepts the batch's activations "
                                                 "are factorised into")},
    reference="pytorch_grad_cam.DeepFeatureFactorization (tests/test_cam_peers.py)")
