"""A procedural image world: coloured shapes with nuisances, rendered in several styles.

Everything is a pure function of a seed (numpy ``Generator``s, PIL drawing), so the same seed gives
the same scene, the same pixels and the same caption on every machine.

* The **class** of an object is its colour x shape ("red star").
* **Nuisances**: size (small/large), position (center/left/right/top/bottom), rotation, background
  texture and colour, lighting, shadow, pixel noise.
* **Styles**: ``photo`` (textured background, shaded object, shadow), ``sketch`` (coloured outline on
  paper, sometimes hatched), ``cartoon`` (flat colours, black outline, pastel background), ``night``
  (dark, blue-tinted, grainy photo), ``blurry`` (out-of-focus photo), ``noisy`` (heavily noisy photo).

:func:`sample_scene` draws a :class:`Scene`; :func:`render` turns it into a ``PIL.Image``;
:func:`caption` writes a caption from templates ("a blurry photo of a small red star on the left.").
"""
import dataclasses
import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "COLOURS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
    "BACKGROUNDS",
    "STYLES",
    "STYLE_TEMPLATES",
    "Scene",
    "sample_scene",
    "render",
    "render_array",
    "caption",
    "caption_spec",
    "describe",
    "classname",
    "scene_rng",
]

# Object colours (class attribute). Values are sRGB in [0, 1].
COLOURS = {
    "red": (0.86, 0.13, 0.13),
    "orange": (0.97, 0.55, 0.08),
    "yellow": (0.95, 0.87, 0.12),
    "green": (0.13, 0.66, 0.22),
    "blue": (0.14, 0.30, 0.88),
    "purple": (0.56, 0.18, 0.76),
    "pink": (0.98, 0.50, 0.75),
    "cyan": (0.12, 0.80, 0.86),
}
# Object shapes (class attribute).
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring", "moon", "arrow")
SIZES = ("small", "large")
POSITIONS = ("center", "left", "right", "top", "bottom")
BACKGROUNDS = ("plain", "striped", "dotted", "checkered", "gradient")
STYLES = ("photo", "sketch", "cartoon", "night", "blurry", "noisy")

_SIZE_RADIUS = {"small": 0.17, "large": 0.31}  # object radius as a fraction of the image side
_POSITION_DIR = {"center": (0, 0), "left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}
_POSITION_WORDS = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
_SUPERSAMPLE = 4

# Caption templates per style; "{}" is the object phrase ("small red star on the left").
STYLE_TEMPLATES = {
    "photo": ("a photo of a {}", "a picture of a {}", "an image of a {}", "a photo of the {}", "a {}",
              "a good photo of a {}", "a close-up photo of a {}"),
    "sketch": ("a sketch of a {}", "a drawing of a {}", "a pencil sketch of a {}", "an outline drawing of a {}",
               "a line drawing of a {}"),
    "cartoon": ("a cartoon of a {}", "a cartoon drawing of a {}", "a clip art of a {}", "an illustration of a {}"),
    "night": ("a photo of a {} at night", "a dark photo of a {}", "a night photo of a {}",
              "a photo of a {} in the dark"),
    "blurry": ("a blurry photo of a {}", "a blurred photo of a {}", "an out of focus photo of a {}"),
    "noisy": ("a noisy photo of a {}", "a grainy photo of a {}", "a low quality photo of a {}"),
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """Every parameter needed to render one image (captioned attributes first)."""

    colour: str
    shape: str
    size: str
    position: str
    background: str
    style: str
    rotation: float  # degrees
    # Resolved rendering parameters.
    rgb: tuple  # object colour after jitter
    bg_rgb: tuple  # background base colour
    bg_rgb2: tuple  # second background colour (patterns)
    bg_angle: float  # radians
    bg_period: float  # fraction of the image side
    radius: float  # fraction of the image side
    cx: float
    cy: float
    light: tuple  # unit 2-vector: shading direction
    strength: float  # style strength (blur radius / noise level / darkness)
    hatch: bool  # sketch: hatched fill
    noise_seed: int

    @property
    def classname(self):
        return classname(self.colour, self.shape)


def classname(colour, shape):
    return f"{colour} {shape}"


def scene_rng(*keys):
    """A numpy Generator from a tuple of non-negative integers (order-independent seeding)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def _hsv_to_rgb(h, s, v):
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def sample_scene(rng, colour=None, shape=None, style=None, size=None, position=None, background=None):
    """Draw a scene; any attribute passed is fixed, the others are drawn uniformly from ``rng``."""
    colour = colour if colour is not None else str(rng.choice(list(COLOURS)))
    shape = shape if shape is not None else str(rng.choice(SHAPES))
    style = style if style is not None else str(rng.choice(STYLES))
    size = size if size is not None else str(rng.choice(SIZES))
    position = position if position is not None else str(rng.choice(POSITIONS))
    background = background if background is not None else str(rng.choice(BACKGROUNDS))
    for value, allowed, what in ((colour, COLOURS, "colour"), (shape, SHAPES, "shape"), (style, STYLES, "style"),
                                 (size, SIZES, "size"), (position, POSITIONS, "position"),
                                 (background, BACKGROUNDS, "background")):
        if value not in allowed:
            raise ValueError(f"Unknown {what} {value!r}; expected one of {list(allowed)}")
    rotation = float(rng.uniform(-25.0, 25.0))
    base = np.array(COLOURS[colour])
    rgb = tuple(float(x) for x in np.clip(base * rng.uniform(0.88, 1.08) + rng.normal(0, 0.03, 3), 0, 1))
    # Muted, low-saturation backgrounds so they never read as an object colour.
    h = float(rng.uniform(0, 1))
    if style == "cartoon":
        bg = _hsv_to_rgb(h, float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.85, 1.0)))
        bg2 = _hsv_to_rgb((h + 0.5) % 1.0, float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.8, 1.0)))
    elif style == "sketch":
        v = float(rng.uniform(0.9, 0.99))
        bg = _hsv_to_rgb(float(rng.uniform(0.08, 0.15)), float(rng.uniform(0.0, 0.08)), v)
        bg2 = bg
    else:
        v = float(rng.uniform(0.3, 0.85))
        bg = _hsv_to_rgb(h, float(rng.uniform(0.0, 0.22)), v)
        dv = float(rng.choice([-1, 1]) * rng.uniform(0.12, 0.25))
        bg2 = _hsv_to_rgb(h, float(rng.uniform(0.0, 0.22)), float(np.clip(v + dv, 0.1, 0.95)))
    radius = _SIZE_RADIUS[size] * float(rng.uniform(0.92, 1.08))
    off = 0.5 - radius - 0.05
    dx, dy = _POSITION_DIR[position]
    cx = 0.5 + dx * off + float(rng.uniform(-0.03, 0.03))
    cy = 0.5 + dy * off + float(rng.uniform(-0.03, 0.03))
    a = float(rng.uniform(0, 2 * math.pi))
    strength = {"photo": 0.0, "sketch": 0.0, "cartoon": 0.0, "night": float(rng.uniform(0.28, 0.45)),
                "blurry": float(rng.uniform(1.0, 1.7)), "noisy": float(rng.uniform(0.12, 0.22))}[style]
    return Scene(
        colour=colour, shape=shape, size=size, position=position, background=background, style=style,
        rotation=rotation, rgb=rgb, bg_rgb=tuple(float(x) for x in bg), bg_rgb2=tuple(float(x) for x in bg2),
        bg_angle=float(rng.uniform(0, math.pi)), bg_period=float(rng.uniform(0.12, 0.3)), radius=radius,
        cx=cx, cy=cy, light=(math.cos(a), math.sin(a)), strength=strength, hatch=bool(rng.random() < 0.5),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


# ----------------------------------------------------------------------------------------------
# Geometry: shape outlines in unit coordinates (radius 1, y down), then rotated/scaled/placed.


def _regular(n, r=1.0, phase=-math.pi / 2):
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star(points=5, outer=1.1, inner=0.45):
    pts = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / points
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart(n=48):
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 16.0, -y / 16.0 + 0.1))
    return pts


_CROSS = [(-0.32, -1), (0.32, -1), (0.32, -0.32), (1, -0.32), (1, 0.32), (0.32, 0.32), (0.32, 1), (-0.32, 1),
          (-0.32, 0.32), (-1, 0.32), (-1, -0.32), (-0.32, -0.32)]
_ARROW = [(-1, -0.22), (0.15, -0.22), (0.15, -0.62), (1.05, 0), (0.15, 0.62), (0.15, 0.22), (-1, 0.22)]
_SQUARE = [(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]
_DIAMOND = [(0, -1.08), (0.6, 0), (0, 1.08), (-0.6, 0)]

# Each shape: list of (polygon, fill) drawn in order onto the mask; fill 255 adds, 0 cuts.
_SHAPE_PARTS = {
    "circle": [(_regular(64, 1.0), 255)],
    "square": [(_SQUARE, 255)],
    "triangle": [([(x, y + 0.18) for x, y in _regular(3, 1.1)], 255)],
    "star": [(_star(), 255)],
    "cross": [(_CROSS, 255)],
    "heart": [(_heart(), 255)],
    "diamond": [(_DIAMOND, 255)],
    "ring": [(_regular(64, 1.0), 255), (_regular(64, 0.55), 0)],
    "moon": [(_regular(64, 1.0), 255), ([(x + 0.5, y - 0.2) for x, y in _regular(64, 0.85)], 0)],
    "arrow": [(_ARROW, 255)],
}


def _shape_mask(scene, n):
    """Anti-aliasable binary mask (uint8 'L' image, side n) of the scene's object."""
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    th = math.radians(scene.rotation)
    c, s = math.cos(th), math.sin(th)
    r = scene.radius * n
    ox, oy = scene.cx * n, scene.cy * n
    for poly, fill in _SHAPE_PARTS[scene.shape]:
        pts = [(ox + r * (c * x - s * y), oy + r * (s * x + c * y)) for x, y in poly]
        draw.polygon(pts, fill=fill)
    return mask


@functools.lru_cache(maxsize=8)
def _grid(n):
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _background(scene, n, rng):
    yy, xx = _grid(n)
    bg = np.array(scene.bg_rgb, np.float32)
    bg2 = np.array(scene.bg_rgb2, np.float32)
    u = xx * math.cos(scene.bg_angle) + yy * math.sin(scene.bg_angle)
    p = scene.bg_period
    kind = scene.background
    if kind == "plain":
        w = np.zeros((n, n), np.float32)
    elif kind == "striped":
        w = (np.sin(2 * math.pi * u / p) > 0).astype(np.float32)
    elif kind == "dotted":
        v = -xx * math.sin(scene.bg_angle) + yy * math.cos(scene.bg_angle)
        fu, fv = (u / p) % 1.0 - 0.5, (v / p) % 1.0 - 0.5
        w = ((fu ** 2 + fv ** 2) < 0.22 ** 2).astype(np.float32)
    elif kind == "checkered":
        v = -xx * math.sin(scene.bg_angle) + yy * math.cos(scene.bg_angle)
        w = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    elif kind == "gradient":
        w = np.clip(u / max(1e-6, u.max()), 0, 1)
    else:  # pragma: no cover - validated in sample_scene
        raise ValueError(kind)
    img = bg[None, None, :] * (1 - w[..., None]) + bg2[None, None, :] * w[..., None]
    if scene.style == "sketch":  # paper grain
        img = img + rng.normal(0, 0.015, (n, n, 1)).astype(np.float32)
    return img


def _erode(mask_img, px):
    """Erode an 'L' mask by about ``px`` pixels (MinFilter, odd kernel)."""
    k = max(3, 2 * int(round(px)) + 1)
    return mask_img.filter(ImageFilter.MinFilter(k))


def _dilate(mask_img, px):
    k = max(3, 2 * int(round(px)) + 1)
    return mask_img.filter(ImageFilter.MaxFilter(k))


def render_array(scene, size=32):
    """Render ``scene`` to a float32 array (size, size, 3) in [0, 1]."""
    rng = np.random.default_rng(scene.noise_seed)
    ss = _SUPERSAMPLE
    n = size * ss
    mask_img = _shape_mask(scene, n)
    m = np.asarray(mask_img, np.float32)[..., None] / 255.0
    rgb = np.array(scene.rgb, np.float32)
    img = _background(scene, n, rng)
    yy, xx = _grid(n)
    style = scene.style
    if style == "sketch":
        line = np.asarray(mask_img, np.float32) - np.asarray(_erode(mask_img, 1.1 * ss), np.float32)
        line = np.clip(line / 255.0, 0, 1)[..., None]
        ink = rgb * 0.85
        if scene.hatch:
            u = (xx + yy) * size / 2.5
            hatch = ((u % 1.0) < 0.3).astype(np.float32)[..., None] * m * 0.55
            img = img * (1 - hatch) + ink * hatch
        img = img * (1 - line * 0.95) + ink * line * 0.95
    elif style == "cartoon":
        outline = np.asarray(_dilate(mask_img, 1.3 * ss), np.float32)[..., None] / 255.0
        img = img * (1 - outline) + 0.05 * outline
        flat = np.clip(np.array(COLOURS[scene.colour], np.float32) * 1.05, 0, 1)
        img = img * (1 - m) + flat * m
    else:  # photo-based styles
        # Soft shadow below-right of the object.
        shift = int(round(0.04 * n))
        sh = Image.new("L", (n, n), 0)
        sh.paste(mask_img, (shift, shift))
        sh = np.asarray(sh.filter(ImageFilter.GaussianBlur(0.03 * n)), np.float32)[..., None] / 255.0
        img = img * (1 - 0.45 * sh)
        lx, ly = scene.light
        d = ((xx - scene.cx) * lx + (yy - scene.cy) * ly) / max(scene.radius, 1e-3)
        shade = np.clip(1.0 + 0.22 * d, 0.6, 1.25)[..., None]
        obj = np.clip(rgb * shade, 0, 1)
        img = img * (1 - m) + obj * m
    img = np.clip(img, 0, 1)
    pil = Image.fromarray((img * 255 + 0.5).astype(np.uint8), "RGB").resize((size, size), Image.BOX)
    if style == "blurry":
        pil = pil.filter(ImageFilter.GaussianBlur(scene.strength * size / 32.0))
    out = np.asarray(pil, np.float32) / 255.0
    if style == "photo":
        out = out + rng.normal(0, 0.012, out.shape).astype(np.float32)
    elif style == "night":
        tint = np.array([0.55, 0.68, 1.0], np.float32)
        out = out * tint * scene.strength + np.array([0.01, 0.015, 0.04], np.float32)
        out = out + rng.normal(0, 0.025, out.shape).astype(np.float32)
    elif style == "noisy":
        out = out + rng.normal(0, scene.strength, out.shape).astype(np.float32)
        sp = rng.random(out.shape[:2])
        out[sp < 0.03] = 0.0
        out[sp > 0.97] = 1.0
    return np.clip(out, 0, 1).astype(np.float32)


def render(scene, size=32):
    """Render ``scene`` to an RGB ``PIL.Image`` of side ``size``."""
    arr = render_array(scene, size)
    return Image.fromarray((arr * 255 + 0.5).astype(np.uint8), "RGB")


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def describe(scene, with_size=True, with_position=True, with_background=False):
    """The object phrase: "[small ]red star[ on the left][ on a striped background]"."""
    words = []
    if with_size:
        words.append(scene.size)
    words += [scene.colour, scene.shape]
    if with_position:
        words.append(_POSITION_WORDS[scene.position])
    if with_background:
        words.append(f"on a {scene.background} background")
    return " ".join(words)


def caption(scene, rng=None):
    """A caption for ``scene``.

    Without ``rng`` the canonical caption (first template of the style, size and position, final
    period): "a blurry photo of a small red star on the left.". With ``rng`` the template, which
    nuisance words appear, the size synonym, the article and the final period are drawn at random;
    colour, shape and (except for the bare "a {}" template) the style word are always present.
    """
    return caption_spec(scene, rng)[0]


def caption_spec(scene, rng=None):
    """``(caption, mentioned)``: the caption and the set of attributes it states, among
    ``{"size", "position", "background", "style"}`` (colour and shape are always stated)."""
    if rng is None:
        return _fill(STYLE_TEMPLATES[scene.style][0], describe(scene)) + ".", {"size", "position", "style"}
    mentioned = {"style"}
    with_size = rng.random() < 0.5
    with_position = rng.random() < 0.5
    with_background = scene.style != "sketch" and rng.random() < 0.25
    phrase = describe(scene, with_size=with_size, with_position=with_position, with_background=with_background)
    mentioned |= {k for k, v in (("size", with_size), ("position", with_position),
                                 ("background", with_background)) if v}
    if with_size and scene.size == "large" and rng.random() < 0.3:
        phrase = phrase.replace("large ", "big ", 1)
    templates = STYLE_TEMPLATES[scene.style]
    # Photo captions mostly use the plain "a photo of a" form, as on the web.
    if scene.style == "photo" and rng.random() < 0.5:
        template = templates[0]
    else:
        template = templates[int(rng.integers(len(templates)))]
    if template == "a {}":
        mentioned.discard("style")
    text = _fill(template, phrase, grammatical=rng.random() < 0.5)
    return text + ("." if rng.random() < 0.6 else ""), mentioned


def _fill(template, phrase, grammatical=False):
    text = template.format(phrase)
    if grammatical:  # "a orange" -> "an orange" (CoOp-style templates keep "a" regardless)
        text = text.replace(" a " + phrase, " " + _article(phrase) + " " + phrase, 1)
        if text.startswith("a " + phrase):
            text = _article(phrase) + text[1:]
    return text
