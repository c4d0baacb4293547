"""Built-in procedurally generated data set: coloured shapes on textured, cluttered backgrounds.

Every scene is a pure function of (seed, split, index), so it needs no files, no download and no
cache, and train/val never share an RNG stream. Masks are exact (rasterised from the same geometry
as the pixels) and boxes are the tight boxes of the *visible* mask after occlusion.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .base import DetectionDataset, ImageAnnotation, Transform
from .boxes import masks_to_boxes
from .errors import DataError

CLASS_NAMES = ["circle", "square", "triangle", "star"]
# Distinct base colours (jittered per object) make the classes learnable by a small CNN in few steps.
CLASS_COLOURS = np.array([[220, 50, 50], [40, 185, 60], [50, 90, 225], [240, 200, 30]], dtype=np.int16)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
GENERATOR_VERSION = 1  # bump when scenes change, so cached priors keyed by fingerprint() are invalidated
MAX_OBJECTS = 6
MIN_VISIBLE_PX = 20  # instances occluded below this are not annotated
MIN_OBJECT_PX = 10.0
COLOUR_JITTER = 35


@dataclass
class _Shape:
    kind: int  # class index 0..C-1
    cx: float
    cy: float
    size: float  # diameter of the enclosing circle, px
    angle: float
    aspect: float
    colour: np.ndarray  # uint8 [3]


@dataclass
class _Scene:
    objects: list[_Shape]
    texture_seed: int
    background: int  # 0 noise, 1 gradient, 2 stripes
    bg_colours: np.ndarray  # [2,3]
    bg_angle: float
    bg_period: float
    clutter_lines: np.ndarray  # [K,8]: x0 y0 x1 y1 half-width r g b
    clutter_blobs: np.ndarray  # [K,7]: cx cy rx ry grey tint-g tint-b


def _crop(cx: float, cy: float, radius: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer pixel window covering a disc, clipped to the image; None when fully outside."""
    x0, x1 = max(0, int(np.floor(cx - radius))), min(width, int(np.ceil(cx + radius)) + 1)
    y0, y1 = max(0, int(np.floor(cy - radius))), min(height, int(np.ceil(cy + radius)) + 1)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _polygon_inside(px: np.ndarray, py: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over pixels (loop over the few edges only)."""
    inside = np.zeros(np.broadcast_shapes(px.shape, py.shape), dtype=bool)
    n = len(vx)
    for k in range(n):
        xa, ya, xb, yb = vx[k], vy[k], vx[(k + 1) % n], vy[(k + 1) % n]
        if ya == yb:
            continue
        crosses = (ya > py) != (yb > py)
        x_at = xa + (py - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (px < x_at)
    return inside


def _shape_vertices(shape: _Shape) -> tuple[np.ndarray, np.ndarray]:
    r = shape.size / 2
    if shape.kind == 1:  # square (slightly rectangular), corners on the enclosing circle
        half = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64) * (r / np.sqrt(2))
        half[:, 0] *= np.sqrt(shape.aspect)
        half[:, 1] /= np.sqrt(shape.aspect)
        pts = half
    elif shape.kind == 2:  # triangle
        t = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * r
    else:  # five-pointed star
        t = np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], axis=1)
    c, s = np.cos(shape.angle), np.sin(shape.angle)
    x = pts[:, 0] * c - pts[:, 1] * s + shape.cx
    y = pts[:, 0] * s + pts[:, 1] * c + shape.cy
    return x, y


def _shape_mask(shape: _Shape, width: int, height: int) -> np.ndarray:
    """Exact full-image bool mask; pixel (x, y) is in the shape when its centre (x+.5, y+.5) is."""
    mask = np.zeros((height, width), dtype=bool)
    r = shape.size / 2
    window = _crop(shape.cx, shape.cy, r, width, height)
    if window is None:
        return mask
    x0, y0, x1, y1 = window
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    if shape.kind == 0:  # circle (slightly elliptical, rotated)
        dx, dy = px - shape.cx, py - shape.cy
        c, s = np.cos(shape.angle), np.sin(shape.angle)
        u, v = dx * c + dy * s, -dx * s + dy * c
        rx, ry = r * min(1.0, shape.aspect), r * min(1.0, 1 / shape.aspect)
        inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    else:
        inside = _polygon_inside(px, py, *_shape_vertices(shape))
    mask[y0:y1, x0:x1] = inside
    return mask


class SyntheticDataset(DetectionDataset):
    """Deterministic shapes data set (default data of the project); see the module docstring."""

    def __init__(self, num_images: int = 200, *, split: str = "train", seed: int = 0, image_size: int = 256,
                 transforms: Transform | None = None, with_masks: bool | None = None) -> None:
        if num_images < 1:
            raise DataError(f"no images in synthetic data set: num_images must be >= 1, got {num_images}")
        if split not in SPLIT_IDS:
            raise DataError(f"synthetic split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if seed < 0:
            raise DataError(f"synthetic seed must be >= 0, got {seed}")
        if image_size < 32:
            raise DataError(f"synthetic image_size must be >= 32, got {image_size}")
        self.num_images = int(num_images)
        self.split = split
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.transforms = transforms
        self.has_masks = True if with_masks is None else bool(with_masks)
        self.class_names = list(CLASS_NAMES)
        self.source = f"synthetic:{num_images}[{split}, seed={seed}]"
        self._annotations: dict[int, ImageAnnotation] = {}

    def __len__(self) -> int:
        return self.num_images

    # -- scene sampling (all randomness; cheap) ---------------------------------------------------
    def _scene(self, i: int) -> _Scene:
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], i])
        s = self.image_size
        objects = []
        for _ in range(int(rng.integers(0, MAX_OBJECTS + 1))):
            kind = int(rng.integers(0, len(CLASS_NAMES)))
            size = float(np.exp(rng.uniform(np.log(MIN_OBJECT_PX), np.log(s / 2))))
            margin = size * 0.2  # mostly inside; some truncated by the border
            cx, cy = rng.uniform(-margin, s + margin, size=2)
            colour = np.clip(CLASS_COLOURS[kind] + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
            objects.append(_Shape(kind, float(cx), float(cy), size, float(rng.uniform(0, 2 * np.pi)),
                                  float(rng.uniform(0.8, 1.25)), colour.astype(np.uint8)))
        # Muted (low-saturation) backgrounds keep objects salient but not trivially so.
        grey = rng.uniform(50, 200, size=(2, 1))
        bg_colours = np.clip(grey + rng.uniform(-25, 25, size=(2, 3)), 0, 255)
        n_lines, n_blobs = rng.integers(0, 5, size=2)
        lines = np.concatenate([rng.uniform(0, s, size=(n_lines, 4)), rng.uniform(0.5, 2.0, size=(n_lines, 1)),
                                rng.uniform(0, 255, size=(n_lines, 3))], axis=1)
        blobs = np.concatenate([rng.uniform(0, s, size=(n_blobs, 2)), rng.uniform(3, s / 8, size=(n_blobs, 2)),
                                rng.uniform(40, 215, size=(n_blobs, 1)), rng.uniform(-20, 20, size=(n_blobs, 2))],
                               axis=1)
        return _Scene(objects, int(rng.integers(0, 2**31)), int(rng.integers(0, 3)), bg_colours,
                      float(rng.uniform(0, np.pi)), float(rng.uniform(6, 40)), lines, blobs)

    def _build(self, i: int) -> tuple[_Scene, list[np.ndarray], np.ndarray, ImageAnnotation]:
        scene = self._scene(i)
        s = self.image_size
        full = [_shape_mask(obj, s, s) for obj in scene.objects]
        covered = np.zeros((s, s), dtype=bool)
        visible: list[np.ndarray | None] = [None] * len(full)
        for k in range(len(full) - 1, -1, -1):  # later objects are drawn on top
            vis = full[k] & ~covered
            covered |= full[k]
            if vis.sum() >= MIN_VISIBLE_PX:
                visible[k] = vis
        kept = [(obj, v) for obj, v in zip(scene.objects, visible) if v is not None]
        masks = np.stack([v for _, v in kept]) if kept else np.zeros((0, s, s), dtype=bool)
        ann = ImageAnnotation.make(i + 1, "", s, s, masks_to_boxes(masks), [obj.kind + 1 for obj, _ in kept])
        self._annotations[i] = ann
        return scene, full, masks, ann

    # -- rendering -----------------------------------------------------------------------------
    def _render(self, scene: _Scene, full: list[np.ndarray]) -> np.ndarray:
        s = self.image_size
        rng = np.random.default_rng(scene.texture_seed)
        yy = np.arange(s, dtype=np.float32)[:, None]
        xx = np.arange(s, dtype=np.float32)[None, :]
        c0, c1 = scene.bg_colours.astype(np.float32)
        if scene.background == 0:  # blotchy low-frequency noise
            cells = max(2, s // 16)
            coarse = rng.random((cells, cells), dtype=np.float32)
            reps = -(-s // cells)
            t = np.kron(coarse, np.ones((reps, reps), np.float32))[:s, :s]
        elif scene.background == 1:  # linear gradient
            d = xx * np.cos(scene.bg_angle) + yy * np.sin(scene.bg_angle)
            t = (d - d.min()) / max(float(d.max() - d.min()), 1.0)
        else:  # stripes
            d = xx * np.cos(scene.bg_angle) + yy * np.sin(scene.bg_angle)
            t = 0.5 + 0.5 * np.sin(d * (2 * np.pi / scene.bg_period))
        # Channel-first float32 keeps every broadcast contiguous (3x faster than HWC at this size).
        image = c0[:, None, None] + t[None] * (c1 - c0)[:, None, None]

        def paint(window: tuple[int, int, int, int], inside: np.ndarray, colour: np.ndarray) -> None:
            x0, y0, x1, y1 = window
            image[:, y0:y1, x0:x1][:, inside] = np.asarray(colour, dtype=np.float32)[:, None]

        for cx, cy, rx, ry, grey, t1, t2 in scene.clutter_blobs:  # greyish ellipses: not objects
            window = _crop(cx, cy, max(rx, ry), s, s)
            if window is not None:
                x0, y0, x1, y1 = window
                inside = ((xx[:, x0:x1] + 0.5 - cx) / rx) ** 2 + ((yy[y0:y1] + 0.5 - cy) / ry) ** 2 <= 1.0
                paint(window, inside, np.array([grey, grey + t1, grey + t2]))
        for x0f, y0f, x1f, y1f, half, r, g, b in scene.clutter_lines:  # thin lines: not objects
            window = _crop((x0f + x1f) / 2, (y0f + y1f) / 2, np.hypot(x1f - x0f, y1f - y0f) / 2 + half, s, s)
            if window is not None:
                x0, y0, x1, y1 = window
                px, py = xx[:, x0:x1] + 0.5, yy[y0:y1] + 0.5
                dx, dy = x1f - x0f, y1f - y0f
                u = np.clip(((px - x0f) * dx + (py - y0f) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
                paint(window, (px - x0f - u * dx) ** 2 + (py - y0f - u * dy) ** 2 <= half * half,
                      np.array([r, g, b]))
        for obj, mask in zip(scene.objects, full):
            window = _crop(obj.cx, obj.cy, obj.size / 2, s, s)  # the window the mask was rasterised in
            if window is not None:
                x0, y0, x1, y1 = window
                paint(window, mask[y0:y1, x0:x1], obj.colour)
        image += rng.random((s, s), dtype=np.float32) * 10.0 - 5.0  # mild sensor noise
        return np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0)  # HWC view of CHW memory

    # -- DetectionDataset ------------------------------------------------------------------------
    def annotation(self, i: int) -> ImageAnnotation:
        i = self._index(i)
        if i not in self._annotations:
            self._build(i)
        return self._annotations[i]

    def load_image(self, i: int) -> np.ndarray:
        scene, full, _, _ = self._build(self._index(i))
        return self._render(scene, full)

    def masks(self, i: int) -> np.ndarray:
        return self._build(self._index(i))[2].astype(np.uint8)

    def _sample(self, i: int) -> tuple[np.ndarray, ImageAnnotation, np.ndarray | None]:
        scene, full, masks, ann = self._build(i)
        return self._render(scene, full), ann, masks.astype(np.uint8) if self.has_masks else None

    def fingerprint(self) -> str:
        """Scenes are a pure function of these parameters, so hashing them avoids generating every image."""
        key = f"synthetic|v{GENERATOR_VERSION}|{self.num_images}|{self.split}|{self.seed}|{self.image_size}|" \
              f"{self.class_names}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]
