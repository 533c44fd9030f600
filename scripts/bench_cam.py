"""CAM speed, side by side in one run, printed as ratios (CPU by default).

* Every method against its peer (``--sections methods``, scripts/cam_table.py): one table
  method x (images forwarded, vistool s, peer s, speed-up, x the forward + backward
  bound, max |difference|) on the trained shapes CNN (batch 8, 64²) and resnet50 (batch
  8, 224²; on the CPU without the perturbation methods, which get resnet18 and one
  224² image instead: 2048 channels x 8 images of resnet50 forwards take hours here).
  SS-CAM and IS-CAM use ``--samples`` samples, ours and torch-cam's.
* Grad-CAM on resnet50 (batch 8) and vgg16 (batch 4, features.28), 224²: vistool's
  generic path vs the lower bound (forward + autograd.grad to the layer), captum's
  LayerGradCam, torch-cam's GradCAM and pytorch-grad-cam's GradCAM.
* The closed-form path (GAP + linear head) on resnet50 vs a plain forward pass.
* topk=5 vs topk=1 (one forward either way).
* Score-CAM on resnet18, one 224² image: vistool exact (with the max difference to
  pytorch-grad-cam's map) and fast (Faster Score-CAM, ``--fast-channels``) vs
  pytorch-grad-cam and torch-cam in interleaved rounds (best times, and the median and
  range of the per-round ratios, which drift in the machine's speed affects least); the
  fast mode's map correlation to the exact map is measured on the trained shapes CNN
  (trained on first use, cached).

* Segmentation (``--sections segmentation``): Grad-CAM of a class's score over its
  predicted pixels on deeplabv3_resnet50 and fcn_resnet50 (random weights, batch 2,
  128²), vistool (``SegmentationTarget``) against pytorch-grad-cam (its tutorial's model
  wrapper and ``SemanticSegmentationTarget``) and the bound (forward + autograd.grad of
  that score to ``backbone.layer4``).

Peers come from ``pip install -e '.[bench]'``; a missing peer is reported and skipped.
Times are medians of interleaved repeats after a warm-up. The peers' NumPy (OpenBLAS)
threads are told to sleep after 2^4 idle cycles instead of spinning for about 2^28: in an
interleaved round they otherwise hold the cores while the next case (ours or the other
peer) runs, and on 2 cores the Eigen-CAM family measured 2-3x slower than it is.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from benchutil import report, timeit

from vistool import preserved_state, record
from vistool.explainers.cam import explain


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def gradcam_cases(model, x, layer: str, targets: list[int]) -> dict[str, Callable[[], object]]:
    module = dict(model.named_modules())[layer]
    target_t = torch.tensor(targets, device=x.device)

    def lower_bound():  # frozen weights: the graph starts at the layer
        with preserved_state(model, frozen=True), torch.enable_grad(), \
                record(model, layer, gradients=True) as rec:
            out = model(x)
            return torch.autograd.grad(out.gather(1, target_t[:, None]).sum(), rec.outputs)

    cases = {
        "lower bound (forward + grad)": lower_bound,
        "vistool gradcam": lambda: explain(model, x, "gradcam", targets=targets, layer=layer,
                                           closed_form=False),
    }
    if have("captum"):
        from captum.attr import LayerGradCam

        lgc = LayerGradCam(model, module)
        cases["captum LayerGradCam"] = lambda: lgc.attribute(x, target=targets,
                                                             relu_attributions=True)
    if have("torchcam"):
        from torchcam.methods import GradCAM as TorchCamGradCAM

        def torchcam_run():
            with TorchCamGradCAM(model, target_layer=layer,
                                 input_shape=tuple(x.shape[1:])) as extractor:
                out = model(x)
                return extractor(class_idx=targets, scores=out)

        cases["torch-cam GradCAM"] = torchcam_run
    if have("pytorch_grad_cam"):
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc_run():
            with GradCAM(model=model, target_layers=[module]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])

        cases["pytorch-grad-cam GradCAM"] = pgc_run
    return cases


def scorecam_section(device, fast_channels: int, rounds: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    x = torch.randn(1, 3, 224, 224, device=device)
    target = int(model(x).argmax())
    print(f"\nScore-CAM, resnet18 layer4, one 224² image, {device} ({rounds} interleaved "
          f"rounds; a round's ratio compares runs made one after the other)")
    outputs: dict[str, object] = {}

    def keep(name, fn):
        def run():
            outputs[name] = fn()
        return run

    cases = {
        "vistool scorecam (exact)": keep("exact", lambda: explain(
            model, x, "scorecam", targets=target, layer="layer4")),
        f"vistool scorecam (fast, {fast_channels} ch)": lambda: explain(
            model, x, "scorecam", targets=target, layer="layer4", channels=fast_channels),
    }
    if have("pytorch_grad_cam"):
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc_run():
            with ScoreCAM(model=model, target_layers=[model.layer4]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])

        cases["pytorch-grad-cam ScoreCAM"] = keep("pgc", pgc_run)
    if have("torchcam"):
        from torchcam.methods import ScoreCAM as TorchCamScoreCAM

        def torchcam_run():
            with TorchCamScoreCAM(model, target_layer="layer4", batch_size=16) as extractor:
                out = model(x)
                return extractor(class_idx=target, scores=out)

        cases["torch-cam ScoreCAM"] = torchcam_run
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    diff = None
    if "pgc" in outputs:
        diff = float(np.abs(outputs["exact"].maps.cpu().numpy() - outputs["pgc"]).max())
    base = "pytorch-grad-cam ScoreCAM" if "pytorch-grad-cam ScoreCAM" in times else next(
        iter(times))
    print(f"  {'':<34} {'best':>8}     {'best/best':>9}   per-round ratios to {base}")
    for name, values in times.items():
        ratios = sorted(b / v for b, v in zip(times[base], values, strict=True))
        print(f"  {name:<34} {min(values):8.2f} s   {min(times[base]) / min(values):8.2f}x   "
              f"median {statistics.median(ratios):.2f}x, range {ratios[0]:.2f}-{ratios[-1]:.2f}x")
    if diff is not None:
        print(f"  max |vistool exact - pytorch-grad-cam| = {diff:.2e}")

    from trainers.recipes import pretrained_shapes_cnn
    from vistool import load_image, load_model
    from vistool.data.shapes import render_scene

    loaded = load_model(str(pretrained_shapes_cnn(progress=False, log=lambda _line: None)),
                        device=device)
    rng = np.random.default_rng(0)
    images = torch.stack([loaded.transform(load_image(render_scene(
        rng, 64, [int(rng.integers(5))]).image)) for _ in range(32)]).to(device)
    full = explain(loaded, images, "scorecam").maps.flatten(1).cpu().numpy()
    channels = max(1, loaded.model.fc.in_features * fast_channels // 512)
    fast = explain(loaded, images, "scorecam", channels=channels).maps.flatten(1).cpu().numpy()
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(full, fast)]
    print(f"  fast vs exact on the trained shapes CNN ({channels} of "
          f"{loaded.model.fc.in_features} channels, same fraction): map correlation "
          f"mean {np.mean(corr):.4f}, min {np.min(corr):.4f}")


def methods_section(device, repeats: int, samples: int, tables: list[str],
                    only: list[str] | None = None) -> None:
    """The shapes CNN at ``features`` (followed by GAP + linear: the closed form), resnet50
    and resnet18 at layer3 (gradients through layer4: the generic path), vit_b_16's last
    four blocks (the methods for vision transformers)."""
    from cam_table import PERTURBATION, TRANSFORMER, every_method
    from cam_table import methods_table as table

    def methods_table(title, model, x, layers, methods, *args, **kwargs):  # (--methods)
        chosen = [m for m in methods if only is None or m in only]
        if chosen:
            table(title, model, x, layers, chosen, *args, **kwargs)

    from trainers.recipes import pretrained_shapes_cnn
    from vistool import load_image, load_model
    from vistool.data.shapes import render_scene

    options = {"sscam": {"samples": samples}, "iscam": {"samples": samples}}
    if "shapes" in tables:
        loaded = load_model(str(pretrained_shapes_cnn(progress=False, log=lambda _l: None)),
                            device=device)
        rng = np.random.default_rng(0)
        images = torch.stack([loaded.transform(load_image(render_scene(
            rng, 64, [int(rng.integers(5))]).image)) for _ in range(8)]).to(device)
        methods_table("Every method, the trained shapes CNN, batch 8, 64²", loaded.model,
                      images, ["features", "features.12"], every_method(), options, "fc",
                      repeats, device)
    torch.manual_seed(0)
    heavy = PERTURBATION if device.type == "cpu" else ()
    x = torch.randn(8, 3, 224, 224, device=device)
    if "resnet50" in tables:
        model = torchvision.models.resnet50(weights=None).to(device)
        methods_table(f"Every method{' but the perturbation ones' if heavy else ''}, "
                      f"resnet50, batch 8, 224², {device}", model, x, ["layer3", "layer4"],
                      every_method(exclude=(*heavy, "dff")), options, "fc", repeats, device,
                      head_layer="layer4")
    if heavy and "perturbation" in tables:
        model = torchvision.models.resnet18(weights=None).to(device)
        methods_table(f"The perturbation methods, resnet18, one 224² image, {device}", model,
                      x[:1], ["layer3", "layer4"], list(heavy), options, "fc", repeats, device)
    if "vit" in tables:
        model = torchvision.models.vit_b_16(weights=None)
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # (torchvision zeroes it)
        batch = 2 if device.type == "cpu" else 8
        blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(8, 12)]
        methods_table(f"Vision transformers, vit_b_16 (random), its last four blocks, batch "
                      f"{batch}, 224², {device}", model.to(device), x[:batch], blocks,
                      list(TRANSFORMER), options, "heads", repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case")
    parser.add_argument("--fast-channels", type=int, default=64,
                        help="channels of Faster Score-CAM (default: %(default)s)")
    parser.add_argument("--sections", default="gradcam,scorecam,methods",
                        help="comma-separated: gradcam (Grad-CAM, closed form, topk), scorecam "
                        "(exact and fast vs the peers), methods (every method's table), "
                        "segmentation (Grad-CAM of segmentation models) "
                        "(default: %(default)s)")
    parser.add_argument("--tables", default="shapes,resnet50,perturbation,vit",
                        help="methods: which tables (default: %(default)s)")
    parser.add_argument("--methods", default="",
                        help="methods: only these, comma-separated (default: every one)")
    parser.add_argument("--samples", type=int, default=2,
                        help="methods: SS-CAM's and IS-CAM's samples (default: %(default)s)")
    parser.add_argument("--scorecam-rounds", type=int, default=5,
                        help="interleaved Score-CAM rounds (default: %(default)s)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sections = args.sections.split(",")
    torch.manual_seed(0)
    if "gradcam" in sections:
        gradcam_section(device, args.repeats)
    if "scorecam" in sections:
        scorecam_section(device, args.fast_channels, args.scorecam_rounds)
    if "methods" in sections:
        methods_section(device, args.repeats, args.samples, args.tables.split(","),
                        args.methods.split(",") if args.methods else None)
    if "segmentation" in sections:
        segmentation_section(device, args.repeats)


def segmentation_section(device, repeats: int) -> None:
    if not have("pytorch_grad_cam"):
        print("\npytorch-grad-cam missing: segmentation section skipped")
        return
    for name in ("deeplabv3_resnet50", "fcn_resnet50"):
        segmentation_case(name, device, repeats)


class _Out(torch.nn.Module):
    """pytorch-grad-cam's tutorial: the segmentation model returning its "out"."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images)["out"]


def segmentation_case(name: str, device, repeats: int) -> None:
    import pytorch_grad_cam as gc
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    import vistool

    loaded = vistool.load_model(name, weights="none", device=device, seed=0)
    model, layer = loaded.model, loaded.default_layer
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        scores = model(x)["out"]
    category = int(scores.argmax(1).flatten().mode().values)
    target = vistool.SegmentationTarget.predicted(scores, category)
    peer = gc.GradCAM(_Out(model), [model.get_submodule(layer)])
    theirs = [SemanticSegmentationTarget(category, m.cpu().numpy()) for m in target.mask]

    def bound():
        with preserved_state(model, frozen=True), torch.enable_grad(), \
                record(model, layer, gradients=True) as rec:
            return torch.autograd.grad(target(model(x)).sum(), rec.outputs)

    times = timeit({
        "bound (forward + grad)": bound,
        "vistool gradcam": lambda: explain(loaded, x, "gradcam", targets=target),
        "pytorch-grad-cam GradCAM": lambda: peer(x, theirs),
    }, repeats, device)
    report(f"Segmentation Grad-CAM, {name} {layer}, class {category} over its "
           f"{float(target.mask.float().mean()):.0%} of the pixels, batch 2, 128², {device}",
           times, "bound (forward + grad)")
    print(f"  speed-up against pytorch-grad-cam: "
          f"{times['pytorch-grad-cam GradCAM'] / times['vistool gradcam']:.2f}x")


def gradcam_section(device, repeats: int) -> None:
    for name, layer, batch in (("resnet50", "layer4", 8), ("vgg16", "features.28", 4)):
        model = torchvision.models.get_model(name, weights=None).eval().to(device)
        x = torch.randn(batch, 3, 224, 224, device=device)
        targets = model(x).argmax(1).tolist()
        times = timeit(gradcam_cases(model, x, layer, targets), repeats, device)
        report(f"Grad-CAM, {name} {layer}, batch {batch}, 224², {device}", times,
               "lower bound (forward + grad)")

    model = torchvision.models.resnet50(weights=None).eval().to(device)
    x = torch.randn(8, 3, 224, 224, device=device)

    def plain():
        with torch.no_grad():
            return model(x)

    times = timeit({
        "plain forward": plain,
        "vistool gradcam (closed form)": lambda: explain(model, x, "gradcam"),
        "vistool gradcam topk=5 (closed)": lambda: explain(model, x, "gradcam", topk=5),
    }, repeats, device)
    report(f"Closed form, resnet50 layer4, batch 8, 224², {device}", times, "plain forward")
    times = timeit({
        "generic topk=1": lambda: explain(model, x, "gradcam", topk=1, closed_form=False),
        "generic topk=5": lambda: explain(model, x, "gradcam", topk=5, closed_form=False),
    }, repeats, device)
    report(f"topk, resnet50 layer4, batch 8, generic path, {device}", times, "generic topk=1")


if __name__ == "__main__":
    main()
