"""The synthetic ``shapes`` scenes: objects of known class, box and mask on a textured background.

Deterministic by seed; several shape classes of random size, colour and position. The
ground-truth box and mask of every object are kept so localisation can be measured. The
trainers train on :class:`ShapesDataset`; the demo, the dashboard and the tests draw
single scenes with :func:`render_scene`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SHAPE_CLASSES", "Scene", "ShapesDataset", "render_scene"]

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross")


@dataclass
class Scene:
    """A rendered image (H, W, 3) uint8 with its objects' labels, boxes (x0, y0, x1, y1), masks."""

    image: np.ndarray
    labels: list[int]
    boxes: list[tuple[int, int, int, int]]
    masks: np.ndarray  # (objects, H, W) bool


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(0, 1, size=(6, 6, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 0.05, size=(size, size, 3)).astype(np.float32)
    base = 0.35 + 0.3 * smooth + grain
    return np.clip(base * 255, 0, 255).astype(np.uint8)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == "square":
        ts = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif kind == "triangle":
        ts = angle + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    elif kind == "star":
        ts = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:
        raise ValueError(kind)
    return np.stack([cx + radii * np.cos(ts), cy + radii * np.sin(ts)], 1)


def _draw(mask: np.ndarray, kind: str, cx: float, cy: float, r: float, angle: float) -> None:
    if kind == "circle":
        cv2.circle(mask, (round(cx), round(cy)), round(r), 1, -1, lineType=cv2.LINE_8)
    elif kind == "cross":
        w = 0.32 * r
        for theta in (angle, angle + np.pi / 2):
            c, s = np.cos(theta), np.sin(theta)
            pts = np.array([[-r, -w], [r, -w], [r, w], [-r, w]]) @ np.array([[c, s], [-s, c]])
            cv2.fillPoly(mask, [np.round(pts + np.array([cx, cy])).astype(np.int32)], 1)
    else:
        pts = _polygon(kind, cx, cy, r, angle)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)


def render_scene(rng: np.random.Generator, size: int, labels: Sequence[int],
                 min_radius: float | None = None, max_radius: float | None = None) -> Scene:
    """Draw one object of each class in ``labels`` on a textured background, without overlaps.

    Objects are placed so that their boxes do not intersect (up to 200 tries each).
    """
    min_radius = min_radius or size * (0.1 if len(labels) == 1 else 0.14)
    max_radius = max_radius or size * (0.3 if len(labels) == 1 else 0.2)
    image = _background(rng, size)
    boxes: list[tuple[int, int, int, int]] = []
    masks = []
    for label in labels:
        for _ in range(200):
            r = rng.uniform(min_radius, max_radius)
            cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
            mask = np.zeros((size, size), np.uint8)
            _draw(mask, SHAPE_CLASSES[label], cx, cy, r, rng.uniform(0, 2 * np.pi))
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]
                   for b in boxes):
                break
        else:
            raise RuntimeError("could not place the objects without overlap; use a larger size")
        color = rng.integers(0, 256, size=3)
        while np.abs(color.astype(float) - image[mask > 0].mean(0)).sum() < 150:
            color = rng.integers(0, 256, size=3)
        image[mask > 0] = color
        boxes.append(box)
        masks.append(mask > 0)
    return Scene(image=image, labels=list(labels), boxes=boxes, masks=np.stack(masks))


class ShapesDataset(Dataset):
    """``n`` single-object shapes images, generated once from ``seed`` (same seed, same data).

    Items are ``(image, label)`` with the image a float tensor (3, H, W) in [0, 1];
    ``boxes[i]`` (x0, y0, x1, y1) and ``masks[i]`` give the object's location.
    """

    classes: tuple[str, ...] = SHAPE_CLASSES

    def __init__(self, n: int, size: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = np.empty((n, size, size, 3), np.uint8)
        self.labels = np.empty(n, np.int64)
        self.boxes = np.empty((n, 4), np.int64)
        self.masks = np.empty((n, size, size), bool)
        for i in range(n):
            label = int(rng.integers(len(SHAPE_CLASSES)))
            scene = render_scene(rng, size, [label])
            self.images[i], self.labels[i] = scene.image, label
            self.boxes[i], self.masks[i] = scene.boxes[0], scene.masks[0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div_(255)
        return image, int(self.labels[index])
