"""``vistool gradcam`` on a semantic segmentation model: the score of a class summed over
the pixels the model assigns to it, or over ``--region`` (pytorch-grad-cam's
``SemanticSegmentationTarget``); per image the map, the predicted mask of the class
and its share of the pixels."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import VistoolError
from .options import slug


def check(args: argparse.Namespace, loaded) -> object:
    """Refuse what does not apply to ``loaded``; return the region (None: the class's
    predicted pixels; a box x0,y0,x1,y1; or a mask (H, W) from an image file)."""
    region = getattr(args, "region", None)
    if loaded.task != "segmentation":
        if region:
            raise VistoolError("--region is for segmentation models (a region of the "
                               "per-pixel output); a classifier explains its class everywhere")
        return None
    if args.command != "gradcam":
        raise VistoolError(f"{args.command} explains classifiers; for the segmentation model "
                           f"{args.model} use 'vistool gradcam'")
    if getattr(args, "topk", None):
        raise VistoolError("--topk ranks a classifier's classes; for a segmentation model "
                           "give --target (default: the class with the most pixels)")
    return _region(region, loaded) if region else None


def _region(text: str, loaded):
    """A box ``x0,y0,x1,y1`` in the model input's pixels, or a mask image (nonzero: in),
    brought to the model input as the images are (resized and cropped)."""
    parts = text.split(",")
    if len(parts) == 4 and all(p.strip().lstrip("-").isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    if not Path(text).is_file():
        raise VistoolError(f"--region {text!r} is neither a box x0,y0,x1,y1 (in the "
                           f"{loaded.input_size[2]}x{loaded.input_size[1]} model input's "
                           "pixels) nor a mask image file")
    from ..core.imageio import deprocess, load_image

    picture = deprocess(loaded.transform(load_image(text))[None], loaded.mean, loaded.std)[0]
    return picture.mean(0) > 0.5


def target(loaded, batch, category: int | None, region):
    """The target for ``batch`` and the model's per-pixel scores (N, classes, H, W): its
    class (default per image: the class other than class 0, the background, with the most
    pixels, else class 0) over the region."""
    import torch

    from ..core.state import preserved_state
    from ..explainers.targets import SegmentationTarget, main_output

    with preserved_state(loaded.model, eval_mode=True), torch.no_grad():
        scores = main_output(loaded.model(batch)).float()
    if category is None:
        counts = torch.nn.functional.one_hot(scores.argmax(1).flatten(1), scores.shape[1]).sum(1)
        counts[:, 0] = torch.where(counts[:, 1:].sum(1) > 0, -1, counts[:, 0])
        category = counts.argmax(1).cpu()
    if region is None:
        return SegmentationTarget.predicted(scores, category), scores
    return SegmentationTarget(category, region), scores


def save_batch(args, staging, loaded, paths, first, batch, result, raw, chosen, scores,
               save_map) -> list[dict]:
    """Per image: the map (overlay, heatmap, raw; ``save_map``, as for a classifier), the
    predicted mask of the class as an overlay, the class's pixel share and the classes
    with the most pixels."""
    import torch

    from ..core.imageio import deprocess
    from ..drawing import enlarge
    from ..outputs import save_png

    views = deprocess(batch, loaded.mean, loaded.std)
    labels = scores.argmax(1)  # (N, H, W)
    shares = torch.nn.functional.one_hot(labels.flatten(1), scores.shape[1]).float().mean(1)
    categories = chosen.category.expand(len(batch)).tolist()
    region = list(chosen.box) if chosen.box is not None else (
        "the class's predicted pixels" if getattr(args, "region", None) is None else
        args.region)
    entries = []
    for j, path in enumerate(paths):
        stem, cls = f"{first + j:03d}-{slug(path.stem)}", categories[j]
        entry = save_map(args, staging, loaded, path, stem, views[j], result.maps[j], cls,
                          float(shares[j, cls]), {n: v[j] for n, v in raw.items()}, 0)
        mask = (labels[j] == cls).float().cpu()
        tint = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
        picture = views[j].cpu() * (1 - 0.5 * mask) + 0.5 * mask * tint
        entry["mask"] = f"{stem}_mask_c{cls}.png"
        save_png(staging / entry["mask"], enlarge(picture))
        entry["pixel_share"] = entry.pop("prob")
        entry.update(region=region, score=round(float(result.scores[j]), 6))
        top = shares[j].topk(min(5, shares.shape[1]))
        entries.append({"image": str(path), "predictions": [
            {"index": int(i), "name": loaded.class_name(int(i)), "pixel_share": round(
                float(v), 6)} for v, i in zip(top.values, top.indices) if v > 0],
            "explanations": [entry]})
    return entries
