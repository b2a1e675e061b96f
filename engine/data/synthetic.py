"""Procedural training clips: coloured shapes whose motion the caption states exactly.

This is the embedded default dataset. Each clip is drawn with numpy from a seed (same seed,
same pixels): 1-3 shapes (circle, square, triangle) on a plain coloured background, each doing
one thing over the whole clip (moving across, rotating, changing colour, growing, shrinking,
bouncing). Shapes are drawn from signed distance fields with a one-pixel soft edge, so
edges are anti-aliased at any resolution.

With several shapes the frame is split into lanes (rows when a shape moves sideways, columns
when one moves vertically; never both), one shape per lane, so shapes never overlap and the
caption can say where each one is ("at the top", "on the left").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Named colours (RGB 0-255). Captions use these names, so keep them plain.
SHAPE_COLORS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (240, 220, 40),
    "orange": (245, 140, 30), "purple": (150, 60, 205), "white": (245, 245, 245), "cyan": (40, 210, 220),
    "pink": (245, 120, 180), "black": (15, 15, 15),
}
BACKGROUNDS = {
    "black": (10, 10, 12), "dark blue": (20, 30, 95), "dark green": (20, 70, 35), "dark gray": (60, 60, 62),
    "maroon": (100, 20, 30), "white": (240, 240, 240), "light gray": (185, 185, 185), "beige": (225, 210, 170),
}
SHAPES = ("circle", "square", "triangle")
SIDEWAYS = ("moves from left to right", "moves from right to left")
VERTICAL = ("moves from top to bottom", "moves from bottom to top", "bounces up and down")
IN_PLACE = ("rotates clockwise", "rotates counterclockwise", "changes color", "grows larger", "shrinks")
# Colours closer than this (RGB distance) to the background are hard to see; never pick them.
MIN_CONTRAST = 130.0


@dataclass(frozen=True)
class SyntheticClip:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    caption: str


@dataclass(frozen=True)
class _Shape:
    kind: str
    motion: str
    color: tuple  # start colour (RGB)
    end_color: tuple  # differs from `color` only for "changes color"
    box: tuple  # (x0, y0, x1, y1) lane the shape stays inside, pixels
    radius: float  # base size (circumradius), pixels
    turns: float  # rotation in turns over the clip (signed), or bounce count
    caption: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _lane_names(n: int, rows: bool) -> list[str]:
    if n == 1:
        return [""]
    if rows:
        return ["at the top", "at the bottom"] if n == 2 else ["at the top", "in the middle", "at the bottom"]
    return ["on the left", "on the right"] if n == 2 else ["on the left", "in the center", "on the right"]


def _plan_scene(rng: np.random.Generator, height: int, width: int) -> tuple[list[_Shape], str, str]:
    """The shapes, the background's name and the caption."""
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    bg_rgb = BACKGROUNDS[background]
    visible = [c for c, rgb in SHAPE_COLORS.items() if _distance(rgb, bg_rgb) >= MIN_CONTRAST]
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    # Lanes are rows if anything moves sideways, columns if anything moves vertically.
    rows = bool(rng.integers(2))
    motions = IN_PLACE + (SIDEWAYS if rows else VERTICAL)
    lane_names = _lane_names(n, rows)
    colors = [visible[i] for i in rng.permutation(len(visible))[:n]]
    shapes = []
    for i in range(n):
        kind = SHAPES[rng.integers(len(SHAPES))]
        options = [m for m in motions if not (kind == "circle" and m.startswith("rotates"))]  # a circle's turn is invisible
        motion = options[rng.integers(len(options))]
        if rows:
            box = (0.0, height * i / n, float(width), height * (i + 1) / n)
        else:
            box = (width * i / n, 0.0, width * (i + 1) / n, float(height))
        lane = min(box[2] - box[0], box[3] - box[1])
        travels = motion.startswith("moves") or motion.startswith("bounces")
        radius = (0.28 if travels else 0.34) * lane
        radius = min(radius, 0.2 * min(height, width))
        color = SHAPE_COLORS[colors[i]]
        end_color = color
        turns = 0.0
        if motion == "changes color":
            others = [c for c in visible if c != colors[i]]
            end_name = others[rng.integers(len(others))]
            end_color = SHAPE_COLORS[end_name]
            what = f"{_article(kind)} {kind}"
            text = f"changes color from {colors[i]} to {end_name}"
        else:
            what = f"{_article(colors[i])} {colors[i]} {kind}"
            text = motion
        if motion.startswith("rotates"):
            turns = float(rng.uniform(0.25, 0.75)) * (1 if motion == "rotates clockwise" else -1)
        elif motion.startswith("bounces"):
            turns = float(rng.integers(2, 4))  # number of bounces
        where = f" {lane_names[i]}" if lane_names[i] else ""
        shapes.append(_Shape(kind, motion, color, end_color, box, radius, turns, f"{what}{where} {text}"))
    parts = [s.caption for s in shapes]
    listed = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return shapes, background, f"{listed} on {_article(background)} {background} background"


def _shape_state(s: _Shape, t: float) -> tuple[float, float, float, float, np.ndarray]:
    """Centre x, y, radius, angle (radians, clockwise on screen) and colour at time t in [0, 1]."""
    x0, y0, x1, y1 = s.box
    cx, cy, r, angle = (x0 + x1) / 2, (y0 + y1) / 2, s.radius, 0.0
    pad = s.radius + 1.0
    m = s.motion
    if m == "moves from left to right":
        cx = x0 + pad + (x1 - x0 - 2 * pad) * t
    elif m == "moves from right to left":
        cx = x1 - pad - (x1 - x0 - 2 * pad) * t
    elif m == "moves from top to bottom":
        cy = y0 + pad + (y1 - y0 - 2 * pad) * t
    elif m == "moves from bottom to top":
        cy = y1 - pad - (y1 - y0 - 2 * pad) * t
    elif m == "bounces up and down":
        floor = y1 - pad
        cy = floor - (y1 - y0 - 2 * pad) * abs(np.sin(np.pi * s.turns * t))
    elif m.startswith("rotates"):
        angle = 2 * np.pi * s.turns * t
    elif m == "grows larger":
        r = s.radius * (0.45 + 0.85 * t)
    elif m == "shrinks":
        r = s.radius * (1.3 - 0.85 * t)
    color = (1 - t) * np.asarray(s.color, np.float32) + t * np.asarray(s.end_color, np.float32)
    return cx, cy, r, angle, color


def _signed_distance(kind: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Distance in pixels to the shape's edge (negative inside); shape centred at 0, y pointing down."""
    if kind == "circle":
        return np.hypot(x, y) - r
    if kind == "square":
        half = r * 0.8
        dx, dy = np.abs(x) - half, np.abs(y) - half
        outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
        return outside + np.minimum(np.maximum(dx, dy), 0)
    # Equilateral triangle pointing up with circumradius r (Inigo Quilez's exact SDF, y flipped).
    k = np.sqrt(3.0)
    side = r * k / 2  # half the side length
    px, py = np.abs(x) - side, -y + r / 2
    fold = px + k * py > 0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * side, 0)
    return -np.hypot(px, py) * np.sign(py)


def render_clip(seed: int, num_frames: int, height: int, width: int, index: int = 0) -> SyntheticClip:
    """Draw clip `index` of the dataset with `seed`: deterministic pixels and the caption that describes them."""
    rng = np.random.default_rng([int(seed), int(index)])
    shapes, background_name, caption = _plan_scene(rng, height, width)
    background = np.asarray(BACKGROUNDS[background_name], np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for f in range(num_frames):
        t = f / (num_frames - 1) if num_frames > 1 else 0.0
        img = np.broadcast_to(background, (height, width, 3)).copy()
        for s in shapes:
            cx, cy, r, angle, color = _shape_state(s, t)
            # Evaluate the shape in its own (un-rotated) frame: rotate pixel offsets by -angle.
            dx, dy = xs - cx, ys - cy
            c, sn = np.cos(angle), np.sin(angle)
            lx, ly = c * dx + sn * dy, -sn * dx + c * dy
            cover = np.clip(0.5 - _signed_distance(s.kind, lx, ly, r), 0.0, 1.0)[..., None]
            img = img * (1 - cover) + color * cover
        frames[f] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return SyntheticClip(frames=frames, caption=caption)
