"""``vistool gradcam --similar-to REF``: explain why each image is similar to a reference
image, or to the mean of a folder of concept images (the cosine similarity of their
embeddings; pytorch-grad-cam's ``SimilarityToConceptTarget``)."""

from __future__ import annotations

import argparse

from ..core.errors import VistoolError


def target(args: argparse.Namespace, loaded):
    """The similarity target ``--similar-to`` and ``--embedding`` ask for, or None."""
    reference = getattr(args, "similar_to", None)
    if reference is None:
        if getattr(args, "embedding", None):
            raise VistoolError("--embedding says where --similar-to compares embeddings; give "
                               "--similar-to too")
        return None
    if args.target is not None or getattr(args, "topk", None):
        raise VistoolError("--similar-to explains a similarity, not a class; drop --target "
                           "and --topk")
    if loaded.task != "classification":
        raise VistoolError("--similar-to compares a classifier's embeddings; "
                           f"{args.model} is a {loaded.task} model")
    import torch

    from ..core.imageio import expand_inputs, load_image
    from ..explainers.targets import SimilarityTarget

    paths = expand_inputs([reference])
    images = torch.stack([loaded.transform(load_image(p)) for p in paths]).to(loaded.device)
    chosen = SimilarityTarget.of_images(loaded.model, images, args.embedding)
    chosen.references = [str(p) for p in paths]
    return chosen


def save_batch(args, staging, loaded, paths, first, batch, result, raw, chosen,
               save_map) -> list[dict]:
    """Per image: the map (overlay, heatmap, raw; ``save_map``, as for a classifier) and
    its similarity to the reference."""
    from ..core.imageio import deprocess
    from .options import predictions, slug

    views = deprocess(batch, loaded.mean, loaded.std)
    top = predictions(loaded, result.logits)
    entries = []
    for j, path in enumerate(paths):
        stem = f"{first + j:03d}-{slug(path.stem)}"
        similarity = float(result.scores[j])
        entry = save_map(args, staging, loaded, path, stem, views[j], result.maps[j],
                         "similar", similarity, {n: v[j] for n, v in raw.items()}, 0)
        entry.pop("prob")
        entry.update(similarity=round(similarity, 6),
                     reference=chosen.references, embedding=args.embedding or "head input",
                     caption=f"{path.name} · {args.method} · similarity {similarity:.3f}")
        entries.append({"image": str(path), "predictions": top[j], "explanations": [entry]})
    return entries
