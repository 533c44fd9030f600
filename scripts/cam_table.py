"""Every CAM method against its peer, for ``bench_cam.py``: one table method x (images
forwarded, vistool s, peer s, speed-up, x the forward+backward bound, max |difference|).

The peer is pytorch-grad-cam's class where it has one, else torch-cam's (as in
tests/test_cam_peers.py). The difference is that of the maps at input resolution (torch-
cam: at layer resolution, min-max scaled); pytorch-grad-cam's principal components are
signed to agree with the channel sum, as ours are (an SVD's sign is arbitrary). "Images
forwarded" counts the images that go through the network (or a copy of it), ours and the
peer's, in one call.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
import torch
from benchutil import timeit
from torch import nn

from vistool import preserved_state, record
from vistool.drawing import normalize
from vistool.explainers.cam import CAM_METHODS, explain
from vistool.explainers.cams import methods
from vistool.explainers.factorization import factorize

#: method -> its peer's class (``CamMethod.peer``, the first word of its ``reference``, as
#: tests/test_cam_peers.py reads it): pytorch-grad-cam's, else torch-cam's
PEER = {name: spec.peer for name, spec in methods().items() if spec.peer}
GRAD_CAM = {m: peer.rsplit(".", 1)[1] for m, peer in PEER.items()
            if peer.startswith("pytorch_grad_cam.") and m != "dff"}
TORCH_CAM = {m: peer.rsplit(".", 1)[1] for m, peer in PEER.items()
             if peer.startswith("torchcam.")}
#: the methods for vision transformers alone (their own table)
TRANSFORMER = ("legrad",)
#: the methods that make a forward per channel, sample or window
PERTURBATION = ("ablationcam", "iscam", "scorecam", "sess", "sscam")
NOTES = {"dff": "every concept's map (vistool.factorize), five concepts",
         "legrad": "the blocks' maps summed (torch-cam: their mean), at the patch grid",
         "smoothgradcam++": "torch-cam deviates from the paper (tests/test_cam_peers.py)",
         "ablationcam": "ours: the closed form where the layer has a GAP + linear head",
         "randomcam": "random weights (seeded alike)",
         "cam": "its map through a ReLU (torch-cam has none)"}


@contextlib.contextmanager
def signed_projections():
    """pytorch-grad-cam's principal components signed to agree with the channel sum."""
    import pytorch_grad_cam.base_cam
    import pytorch_grad_cam.eigen_cam
    import pytorch_grad_cam.eigen_grad_cam
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    def signed(batch):
        proj = get_2d_projection(batch)
        flip = (proj * np.nan_to_num(batch).sum(1)).sum((1, 2)) < 0
        return np.where(flip[:, None, None], -proj, proj).astype(np.float32)

    modules = [pytorch_grad_cam.base_cam, pytorch_grad_cam.eigen_cam,
               pytorch_grad_cam.eigen_grad_cam]
    saved = [m.get_2d_projection for m in modules]
    for module in modules:
        module.get_2d_projection = signed
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.get_2d_projection = original


@contextlib.contextmanager
def counting_images(model: nn.Module) -> list[int]:
    """Counts the images through ``model`` and through any copy of it (of its class, or a
    traced ``torch.fx`` copy) in the block."""
    seen = [0]

    def hook(module, inputs):
        if isinstance(module, (type(model), torch.fx.GraphModule)) and inputs and \
                isinstance(inputs[0], torch.Tensor) and inputs[0].dim() == 4:
            seen[0] += inputs[0].shape[0]

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _grad_cam_peer(method: str, model, layers: list[str], targets: list[int], options: dict):
    import pytorch_grad_cam as gc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    modules = [model.get_submodule(n) for n in layers]
    if method == "sess":
        from pytorch_grad_cam.sess import SESS

        peer = SESS(model, modules, base_method=gc.GradCAM, num_scales=options.get("scales", 12))
    elif method == "fullgrad":
        peer = gc.FullGrad(model, [])
    else:
        peer = getattr(gc, GRAD_CAM[method])(model, modules)
    chosen = [ClassifierOutputTarget(t) for t in targets]

    def run(x):
        if method == "randomcam":
            np.random.seed(0)
        with torch.enable_grad():
            return peer(x) if method == "finercam" else peer(x, chosen)
    return run


def _dff_peer(model, layer: str, head: str):
    """pytorch-grad-cam's DeepFeatureFactorization, five concepts, scored by the head."""
    from pytorch_grad_cam import DeepFeatureFactorization

    peer = DeepFeatureFactorization(model, model.get_submodule(layer),
                                    computation_on_concepts=model.get_submodule(head))

    def run(x):
        return np.stack(peer(x, 5)[1])
    return run


def _torch_cam_peer(method: str, model, layers: list[str], targets: list[int], options: dict,
                    head):
    from torchcam import methods

    kwargs = {"num_samples": options["samples"]} if "samples" in options else {}
    layer = layers if method == "legrad" else layers[0]
    if method == "cam":
        kwargs["fc_layer"] = head
    if method in ("sscam", "iscam"):
        kwargs["batch_size"] = 32

    def run(x):
        shape = {} if method == "legrad" else {"input_shape": tuple(x.shape[1:])}
        with getattr(methods, TORCH_CAM[method])(model, target_layer=layer, **shape,
                                                 **kwargs) as peer:
            with torch.enable_grad():
                scores = model(x)
            torch.manual_seed(options.get("seed", 0))
            if method == "cam":  # torch-cam's CAM has no ReLU: compared after one
                return normalize(peer(targets, scores, normalized=False)[0].clamp_min(0))
            return peer(targets, scores)[0]
    return run


def _ours(method: str, model, x, layers: list[str], targets: list[int], options: dict):
    if method == "dff":
        return lambda: factorize(model, x, layers[0], concepts=5)
    return lambda: explain(model, x, method, targets=None if method == "finercam" else targets,
                           layer=layers, options=options)


def _bound(model, x, layer: str, targets: list[int]) -> Callable[[], object]:
    """A forward and ``autograd.grad`` of the target scores to the layer: no gradient
    method can do less."""
    index = torch.tensor(targets, device=x.device)[:, None]

    def run():
        with preserved_state(model, frozen=True), torch.enable_grad(), \
                record(model, layer, gradients=True) as rec:
            return torch.autograd.grad(model(x).gather(1, index).sum(), rec.outputs)
    return run


def _difference(method: str, ours, theirs, layer: str) -> float:
    if method == "dff":
        return float(np.abs(ours.maps.cpu().numpy() - theirs).max())
    if method in TORCH_CAM:
        raw = sum(ours.raw.values()) if method == "legrad" else ours.raw[layer]
        return float((normalize(raw.float()) - theirs.detach().float()).abs().max())
    return float(np.abs(ours.maps.float().cpu().numpy() - theirs).max())


def methods_table(title: str, model: nn.Module, x: torch.Tensor, layers: list[str],
                  methods: list[str], options: dict[str, dict], head: str | None,
                  repeats: int, device: torch.device, head_layer: str | None = None) -> None:
    """Time every method in ``methods`` against its peer (interleaved, medians) and print
    the table: at ``layers[0]`` (RefineCAM and LeGrad: all ``layers``; the methods that
    need the GAP + linear head, ``head``: at ``head_layer``, default ``layers[0]``)."""
    model = model.eval()
    layer = layers[0]
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    bound = timeit({"bound": _bound(model, x, layer, targets)}, repeats, device)["bound"]
    print(f"\n{title}: forward + autograd.grad to {layer} (the bound) {bound:.3f} s")
    print(f"  {'method':<16} {'images fwd':>13} {'vistool s':>10} {'peer s':>9} "
          f"{'speed-up':>9} {'x bound':>8} {'max |d|':>9}  peer")
    with signed_projections():
        for method in methods:
            spec, opts = methods()[method], options.get(method, {})
            used = layers if method in ("refinecam", "legrad") else [
                head_layer or layer if spec.head == "require" else layer]
            if method == "dff":  # every concept's map, not a class's
                peer, name = _dff_peer(model, used[0], head), "pytorch-grad-cam DFF"
            elif method in TORCH_CAM:
                peer, name = _torch_cam_peer(method, model, used, targets, opts, head), \
                    f"torch-cam {TORCH_CAM[method]}"
            else:
                peer, name = _grad_cam_peer(method, model, used, targets, opts), \
                    f"pytorch-grad-cam {GRAD_CAM[method]}"
            ours = _ours(method, model, x, used, targets, opts)
            with contextlib.redirect_stderr(io.StringIO()):  # (the peers' progress bars)
                times = timeit({"ours": ours, "peer": lambda p=peer: p(x)}, repeats, device)
                with counting_images(model) as mine:  # warm: no one-off probe counted
                    result = ours()
                with counting_images(model) as theirs_count:
                    theirs = peer(x)
            difference = _difference(method, result, theirs, used[0])
            over = f"{times['ours'] / bound:7.2f}x" if spec.gradients else f"{'':>8}"
            print(f"  {method:<16} {mine[0]:>6}/{theirs_count[0]:<6} {times['ours']:10.3f} "
                  f"{times['peer']:9.3f} {times['peer'] / times['ours']:8.2f}x {over} "
                  f"{difference:9.1e}  {name}{'; ' + NOTES[method] if method in NOTES else ''}")


def every_method(exclude: tuple[str, ...] = ()) -> list[str]:
    """The built-in methods for convolutional networks with a peer, alphabetical, less
    ``exclude``."""
    return [m for m in CAM_METHODS if (m in GRAD_CAM or m in TORCH_CAM or m == "dff")
            and m not in (*exclude, *TRANSFORMER)]
