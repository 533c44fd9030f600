"""Grad-CAM on every classification model of torchvision, checked against captum.

For each model (``--weights none``, seeded): one random image at the model's input size,
vistool's default layer, the layout vistool detects there, whether the closed form of a
GAP + linear head applies, vistool's raw Grad-CAM map and captum's ``LayerGradCam`` given
the same reshape (the layer wrapped so that captum sees its (N, C, H, W) grid), the largest
difference relative to captum's largest value, and the seconds vistool took. A model whose
last linear layer is all zeros (torchvision's untrained ViTs) gets it re-initialised
(normal, std 0.01) so the comparison is not of two constant maps; the table says so.

With ``--segmentation``, every semantic segmentation model of torchvision instead (128²
inputs, two images): Grad-CAM of the score of the class with the most pixels summed over
its predicted pixels (``vistool.SegmentationTarget``), against captum's ``LayerGradCam``
of that same score (a forward function returning it).

With ``--timm``, one timm model per family (``TIMM_FAMILIES``; timm installed), the same
way as the torchvision classifiers.

Prints a Markdown table (and the failures' messages); ``--models`` picks a subset.
"""

from __future__ import annotations

import argparse
import gc
import time
import traceback
import warnings

import torch
import torchvision
from torch import nn

import vistool
from vistool.core.layout import GridView, grid_view


class AsGrid(nn.Module):
    """``inner`` followed by its grid, so captum's layer (``grid``) is (N, C, H, W)."""

    def __init__(self, inner: nn.Module, view: GridView):
        super().__init__()
        self.inner, self.view, self.grid = inner, view, nn.Identity()

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        return self.view.from_grid(self.grid(self.view.to_grid(out)), out)


def _zero_head(model: nn.Module) -> bool:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears and not linears[-1].weight.any():
        nn.init.normal_(linears[-1].weight, std=0.01)
        return True
    return False


def captum_map(model: nn.Module, layer: str, view, x: torch.Tensor, target) -> torch.Tensor:
    from captum.attr import LayerGradCam

    module = model.get_submodule(layer)
    if view.layout != "nchw":
        parent, _, child = layer.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        wrapped = AsGrid(module, view)
        setattr(holder, child, wrapped)
        module = wrapped.grid
    attr = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    return attr[:, 0].detach()


def sweep_one(name: str) -> dict:
    torch.manual_seed(0)
    loaded = vistool.load_model(name, weights="none", device="cpu")
    model = loaded.model
    note = "head re-initialised" if _zero_head(model) else ""
    x = torch.randn(1, *loaded.input_size, generator=torch.Generator().manual_seed(1))
    layer = loaded.default_layer
    start = time.perf_counter()
    result = vistool.explain(loaded, x, "gradcam")
    seconds = time.perf_counter() - start
    ours = result.raw[layer]
    with torch.no_grad():
        from vistool.core.hooks import record

        with record(model, [layer]) as rec:
            model(x)
    view = grid_view(layer, rec[layer], x.shape[2:])
    theirs = captum_map(model, layer, view, x, result.targets)
    scale = float(theirs.abs().max())
    diff = float((ours - theirs).abs().max()) / scale if scale > 0 else float(
        (ours - theirs).abs().max())
    return {"model": name, "layer": layer, "layout": view.layout,
            "grid": "x".join(map(str, ours.shape[-2:])),
            "closed": "yes" if result.closed_form else "no", "diff": diff,
            "seconds": seconds, "note": note if scale > 0 else (note + " constant map").strip()}


#: one timm model per family: CNNs, vision transformers, hierarchical and hybrid ones
TIMM_FAMILIES = (
    "resnet18", "efficientnet_b0", "mobilenetv3_small_050", "regnetx_002", "densenet121",
    "convnext_atto", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224", "mixer_b16_224", "levit_128s", "maxvit_tiny_tf_224",
    "efficientvit_b0", "coatnet_0_rw_224",
)


def sweep_segmentation(name: str) -> dict:
    from captum.attr import LayerGradCam

    loaded = vistool.load_model(name, weights="none", device="cpu", input_size=128, seed=0)
    model, layer = loaded.model, loaded.default_layer
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scores = model(x)["out"]
    category = int(scores.argmax(1).flatten().mode().values)
    target = vistool.SegmentationTarget.predicted(scores, category)
    start = time.perf_counter()
    result = vistool.explain(loaded, x, "gradcam", targets=target)
    seconds = time.perf_counter() - start
    ours = result.raw[layer]
    theirs = LayerGradCam(lambda images: target(model(images)), model.get_submodule(layer)
                          ).attribute(x, relu_attributions=True)[:, 0].detach()
    scale = float(theirs.abs().max())
    diff = float((ours - theirs).abs().max()) / (scale if scale > 0 else 1.0)
    share = float(target.mask.float().mean())
    note = f"class {category}, {share:.0%} of the pixels" + ("" if scale > 0 else ", constant")
    return {"model": name, "layer": layer, "layout": "nchw",
            "grid": "x".join(map(str, ours.shape[-2:])), "closed": "no", "diff": diff,
            "seconds": seconds, "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names (default: all classifiers)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--segmentation", action="store_true",
                        help="sweep the semantic segmentation models instead")
    parser.add_argument("--timm", action="store_true",
                        help="sweep one timm model per family instead (TIMM_FAMILIES)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # torchvision's and captum's notices, once per model
    module = (torchvision.models.segmentation if args.segmentation else torchvision.models)
    names = (args.models.split(",") if args.models
             else [f"timm:{n}" for n in TIMM_FAMILIES] if args.timm
             else torchvision.models.list_models(module=module))
    sweep = sweep_segmentation if args.segmentation else sweep_one
    print("| model | default layer | layout | grid | closed form | max rel. diff vs captum "
          "| seconds | note |\n|---|---|---|---|---|---|---|---|", flush=True)
    failures, worst = [], 0.0
    for name in names:
        try:
            row = sweep(name)
        except Exception as exc:  # a sweep reports every model, failed ones included
            failures.append((name, "".join(traceback.format_exception_only(exc)).strip()))
            print(f"| {name} | FAILED | | | | | | {type(exc).__name__} |", flush=True)
            continue
        finally:
            gc.collect()
        worst = max(worst, row["diff"])
        print(f"| {row['model']} | {row['layer']} | {row['layout']} | {row['grid']} | "
              f"{row['closed']} | {row['diff']:.1e} | {row['seconds']:.2f} | {row['note']} |",
              flush=True)
    print(f"\n{len(names) - len(failures)} of {len(names)} models ran; largest relative "
          f"difference {worst:.1e}")
    for name, message in failures:
        print(f"- {name}: {message}")


if __name__ == "__main__":
    main()
