"""Built-in synthetic faces: seeded 48x48 grey face-like images for the 7 FER2013 expressions.

Each expression is a distribution over a few facial-feature parameters (mouth curvature and opening,
brow height and slant, eye opening, nose wrinkles, mouth asymmetry) with overlapping jitter, rendered
under random pose (rotation, scale, shift), lighting gradients, noise and partial occlusion. Class
frequencies follow FER2013's training split (happy 25%, disgust 1.5%). The pose variation is what
makes the task hard for a linear model on raw pixels while a CNN learns it in a few epochs.
"""

from __future__ import annotations

import numpy as np

from fer_ablate.data.dataset import IMAGE_SIZE, NUM_CLASSES

# FER2013 training counts in label order (angry, disgust, fear, happy, sad, surprise, neutral).
FER2013_TRAIN_COUNTS = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965])
CLASS_PRIORS = FER2013_TRAIN_COUNTS / FER2013_TRAIN_COUNTS.sum()
GENERATOR_VERSION = "synthetic-v1"

# Per expression: mouth curvature, mouth opening, brow lift, brow slant (+ = inner ends down),
# eye opening, nose wrinkle, mouth asymmetry. Neutral is all zero / 1.0 eyes.
_EXPRESSIONS = np.array(
    [
        # curve  open  brow_up slant eye   wrinkle asym
        [-0.25, 0.00, -0.10, 0.45, 0.75, 0.2, 0.0],  # angry
        [-0.45, 0.05, -0.05, 0.25, 0.70, 0.9, 0.5],  # disgust
        [-0.15, 0.35, 0.20, -0.35, 1.35, 0.0, 0.0],  # fear
        [0.70, 0.15, 0.00, 0.00, 0.85, 0.1, 0.0],  # happy
        [-0.60, 0.00, 0.05, -0.45, 0.85, 0.0, 0.0],  # sad
        [0.00, 0.70, 0.40, -0.05, 1.50, 0.0, 0.0],  # surprise
        [0.00, 0.00, 0.00, 0.00, 1.00, 0.0, 0.0],  # neutral
    ],
    dtype=np.float32,
)
_JITTER = np.array([0.22, 0.12, 0.10, 0.16, 0.18, 0.25, 0.2], dtype=np.float32)


def _soft(distance: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased stroke: 1 on the feature, fading to 0 over ``width`` pixels-units."""
    return np.clip(1.0 - distance / width, 0.0, 1.0)


def _render(params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render faces for a batch of expression parameter rows; returns float32 [n, 48, 48] in [0, 1]."""
    n = len(params)
    grid = (np.arange(IMAGE_SIZE, dtype=np.float32) - (IMAGE_SIZE - 1) / 2) / (IMAGE_SIZE / 2)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    # Pose: the inverse transform maps image coordinates into face coordinates.
    angle = rng.normal(0, 0.22, n).astype(np.float32)[:, None, None]
    scale = rng.uniform(0.78, 1.12, n).astype(np.float32)[:, None, None]
    dx, dy = (rng.normal(0, 0.09, (2, n)).astype(np.float32)[..., None, None])
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * (xx - dx) + sin * (yy - dy)) / scale
    v = (-sin * (xx - dx) + cos * (yy - dy)) / scale
    curve, opening, brow_up, slant, eye, wrinkle, asym = (params[:, i, None, None] for i in range(7))

    face = _soft(np.sqrt((u / 0.78) ** 2 + (v / 0.95) ** 2) - 0.92, 0.12)
    skin = rng.uniform(0.55, 0.85, n).astype(np.float32)[:, None, None]
    img = 0.25 + face * (skin - 0.25)
    dark = np.zeros_like(img)
    for side in (-1.0, 1.0):
        ex, ey = side * 0.33, -0.22
        eye_dist = np.sqrt(((u - ex) / 0.15) ** 2 + ((v - ey) / (0.075 * eye)) ** 2)
        dark = np.maximum(dark, _soft(eye_dist - 1.0, 0.35))
        # Brow: a short segment above the eye; slant lowers its inner end (towards the nose).
        t = np.clip((u - ex) * side / 0.17, -1.0, 1.0)
        brow_y = ey - 0.2 - brow_up * 0.25 + slant * 0.14 * (-t)
        brow_dist = np.hypot(u - (ex + side * t * 0.17), v - brow_y)
        dark = np.maximum(dark, 0.9 * _soft(brow_dist, 0.07))
    # Mouth: a parabola whose curvature is the expression's main cue; opening adds a dark ellipse.
    mu = np.clip(u / 0.3, -1.0, 1.0)
    mouth_y = 0.45 - curve * 0.2 * (mu**2 - 0.5) + asym * 0.1 * mu
    dark = np.maximum(dark, _soft(np.hypot(u - mu * 0.3, v - mouth_y), 0.07))
    open_dist = np.sqrt((u / 0.2) ** 2 + ((v - 0.46) / (0.2 * opening + 1e-3)) ** 2)
    dark = np.maximum(dark, (opening > 0.05) * _soft(open_dist - 1.0, 0.3))
    # Nose wrinkles (disgust): short horizontal lines beside the nose bridge.
    for row in (0.02, 0.1):
        wr = _soft(np.hypot(np.clip(np.abs(u), 0.06, 0.16) - np.abs(u), v - row), 0.025)
        dark = np.maximum(dark, wrinkle * 0.7 * wr)
    img = img - face * dark * img * 0.85
    # Lighting gradient, noise and a random occluding rectangle (hands, hair, glasses frames).
    light_dir = rng.normal(0, 1, (n, 2)).astype(np.float32)
    light = 1 + 0.25 * (light_dir[:, 0, None, None] * xx + light_dir[:, 1, None, None] * yy)
    img = img * light + rng.normal(0, 0.05, img.shape).astype(np.float32)
    for i in np.flatnonzero(rng.random(n) < 0.25):
        h, w = rng.integers(8, 20, 2)
        y0, x0 = rng.integers(0, IMAGE_SIZE - h), rng.integers(0, IMAGE_SIZE - w)
        img[i, y0:y0 + h, x0:x0 + w] = rng.uniform(0.0, 1.0)
    return np.clip(img, 0.0, 1.0)


def make_synthetic_faces(n: int, seed: int = 2013, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` faces as ``(uint8 [n, 48, 48], int64 labels)`` with FER2013's class priors."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(NUM_CLASSES, size=n, p=CLASS_PRIORS)
    # Guarantee every class (disgust is 1.5%) so stratified splits never lose one.
    labels[:NUM_CLASSES] = np.arange(NUM_CLASSES)
    labels = rng.permutation(labels)
    params = _EXPRESSIONS[labels] + rng.normal(0, 1, (n, 7)).astype(np.float32) * _JITTER
    params[:, 4] = np.clip(params[:, 4], 0.35, None)  # eyes never fully shut
    images = np.concatenate([_render(params[i:i + batch], rng) for i in range(0, n, batch)])
    return (images * 255).round().astype(np.uint8), labels.astype(np.int64)
