"""Procedural porcelain photographs: type -> lathe silhouette, glaze -> colour/gloss/texture,
kiln -> decoration and foot, dynasty -> proportions; nuisance: backdrop, light, pose, scale, noise.

Rendered with numpy at 2x and downsampled (anti-aliasing). Near-identical glazes (white / ivory white /
moon white / transparent / qingbai, celadon / grey-green / sky-celadon) differ by less than the white
balance and lighting jitter, so they are genuinely confusable, as in real museum photographs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.interpolate import PchipInterpolator

# type -> (profile control points (t from rim 0 to foot 1, half-width), height/width aspect, open mouth, extras)
PROFILES: dict[str, tuple[list[tuple[float, float]], float, bool, tuple[str, ...]]] = {
    "bowl": ([(0, 1.0), (0.3, 0.95), (0.7, 0.68), (0.84, 0.42), (0.86, 0.32), (1, 0.32)], 0.45, True, ()),
    "plate": ([(0, 1.0), (0.45, 0.88), (0.75, 0.6), (1, 0.55)], 0.16, True, ()),
    "vase": ([(0, 0.2), (0.07, 0.18), (0.12, 0.38), (0.3, 1.0), (0.62, 0.74), (0.92, 0.5), (1, 0.5)], 1.7, False, ()),
    "jar": ([(0, 0.55), (0.08, 0.55), (0.13, 0.72), (0.4, 1.0), (0.8, 0.76), (1, 0.6)], 0.95, False, ()),
    "ewer": ([(0, 0.22), (0.25, 0.24), (0.36, 0.8), (0.6, 1.0), (0.9, 0.72), (1, 0.62)], 1.2, False,
             ("spout", "handle")),
    "cup": ([(0, 1.0), (0.84, 0.86), (0.9, 0.55), (1, 0.55)], 0.85, True, ()),
    "teabowl": ([(0, 1.0), (0.1, 0.97), (0.74, 0.45), (0.78, 0.3), (1, 0.3)], 0.5, True, ()),
    "cup_stand": ([(0, 0.45), (0.33, 0.45), (0.42, 1.0), (0.55, 1.0), (0.66, 0.42), (1, 0.48)], 0.55, True, ()),
    "washer": ([(0, 1.0), (0.8, 1.0), (0.9, 0.95), (1, 0.9)], 0.28, True, ()),
    "censer": ([(0, 0.82), (0.1, 0.76), (0.45, 1.0), (0.75, 0.82), (0.8, 0.55), (0.82, 0.0)], 0.85, True,
               ("legs", "ears")),
    "brush_pot": ([(0, 0.9), (0.95, 0.9), (1, 0.86)], 1.25, True, ()),
    "zun": ([(0, 1.0), (0.3, 0.5), (0.45, 0.56), (0.55, 0.76), (0.66, 0.5), (0.9, 0.62), (1, 0.66)], 1.5, False, ()),
    "water_pot": ([(0, 0.32), (0.1, 0.45), (0.5, 1.0), (0.85, 0.8), (1, 0.55)], 0.8, False, ()),
    "pillow": ([(0, 1.0), (1, 1.0)], 0.42, False, ("pillow",)),
    "basin": ([(0, 1.0), (0.15, 0.95), (0.9, 0.66), (1, 0.62)], 0.5, True, ()),
    "basin_stand": ([(0, 0.92), (0.2, 0.97), (0.75, 0.97), (0.8, 0.0), (1, 0.0)], 0.3, True, ("cloud_feet",)),
    "water_dropper": ([(0, 0.25), (0.12, 0.42), (0.5, 1.0), (0.85, 0.8), (1, 0.55)], 0.85, False, ("small_spout",)),
    "gui": ([(0, 1.0), (0.4, 0.85), (0.6, 0.5), (0.7, 0.34), (0.85, 0.4), (1, 0.56)], 0.7, True, ("ears",)),
    "box": ([(0, 0.94), (0.05, 1.0), (0.45, 1.0), (0.48, 0.96), (0.52, 1.0), (0.95, 1.0), (1, 0.92)], 0.45,
            False, ("lid",)),
    "dish": ([(0, 1.0), (0.5, 0.8), (1, 0.6)], 0.18, True, ()),
}

# glaze -> (RGB in 0..1, gloss 0..1, texture)
GLAZES: dict[str, tuple[tuple[float, float, float], float, str]] = {
    "celadon": ((0.60, 0.72, 0.58), 0.7, ""),
    "white": ((0.92, 0.92, 0.90), 0.6, ""),
    "black": ((0.10, 0.09, 0.08), 0.9, ""),
    "qingbai": ((0.80, 0.88, 0.87), 0.8, ""),
    "blue_white": ((0.92, 0.92, 0.89), 0.7, "cobalt"),
    "yellow_green": ((0.66, 0.66, 0.40), 0.6, ""),
    "grey_green": ((0.58, 0.63, 0.55), 0.5, ""),
    "brown": ((0.42, 0.24, 0.12), 0.7, ""),
    "green": ((0.24, 0.52, 0.28), 0.8, ""),
    "rose_purple": ((0.62, 0.30, 0.45), 0.6, "splash"),
    "grape_purple": ((0.40, 0.22, 0.40), 0.6, ""),
    "greenish_yellow": ((0.70, 0.66, 0.42), 0.6, ""),
    "sky_blue": ((0.58, 0.70, 0.82), 0.5, ""),
    "tianqing": ((0.64, 0.76, 0.74), 0.45, ""),
    "transparent": ((0.89, 0.88, 0.83), 0.85, ""),
    "moon_white": ((0.82, 0.86, 0.88), 0.4, ""),
    "ivory_white": ((0.92, 0.88, 0.78), 0.5, ""),
}

# kiln -> (decoration, exposed foot colour)
KILNS: dict[str, tuple[str, tuple[float, float, float]]] = {
    "jingdezhen": ("incised", (0.88, 0.86, 0.82)),
    "longquan": ("petals", (0.72, 0.42, 0.28)),
    "ru": ("fine_crackle", (0.72, 0.68, 0.62)),
    "jun": ("splash", (0.60, 0.50, 0.40)),
    "ding": ("metal_rim", (0.90, 0.86, 0.76)),
    "ge": ("dark_crackle", (0.30, 0.26, 0.24)),
    "guan": ("pale_crackle", (0.35, 0.30, 0.27)),
    "cizhou": ("painted", (0.80, 0.74, 0.64)),
    "yaozhou": ("carved", (0.70, 0.60, 0.48)),
    "jian": ("hares_fur", (0.28, 0.18, 0.13)),
    "guang": ("flambe", (0.55, 0.40, 0.30)),
    "huozhou": ("", (0.90, 0.88, 0.84)),
    "linchuan": ("speckle", (0.80, 0.76, 0.68)),
    "dehua": ("", (0.94, 0.91, 0.84)),
    "xianghu": ("crazing", (0.82, 0.80, 0.74)),
    "peng": ("incised", (0.88, 0.85, 0.78)),
    "jizhou": ("tortoiseshell", (0.62, 0.52, 0.42)),
}

BACKDROPS = np.array([
    [0.85, 0.85, 0.84], [0.55, 0.55, 0.56], [0.12, 0.12, 0.13], [0.80, 0.75, 0.66],
    [0.45, 0.50, 0.58], [0.95, 0.95, 0.95], [0.30, 0.26, 0.22],
])


@dataclass(frozen=True)
class Labels:
    dynasty: str | None
    kiln: str | None
    glaze: str
    type: str


@functools.cache
def _profile_curve(kind: str) -> PchipInterpolator:
    """A smooth, overshoot-free silhouette through the control points (potters' curves, not polygons)."""
    ts, rs = zip(*PROFILES[kind][0], strict=True)
    return PchipInterpolator(ts, rs)


def _profile(kind: str, t: np.ndarray, dynasty: str | None) -> np.ndarray:
    r = np.clip(_profile_curve(kind)(t), 0, None)
    if dynasty == "yuan":  # heavier, fuller lower body
        r = r * (1.0 + 0.12 * t)
    return r


def _voronoi_edges(xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator, cells: int, width: float) -> np.ndarray:
    """Crackle network as edges of a random Voronoi tessellation (distance to 2nd - 1st nearest seed)."""
    h, w = xx.shape
    seeds = rng.random((cells, 2)) * [w, h]
    d = np.sqrt((xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2)
    d.partition(1, axis=-1)
    return np.clip(1.0 - (d[..., 1] - d[..., 0]) / width, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    small = rng.random((max(2, shape[0] // scale), max(2, shape[1] // scale))).astype(np.float32)
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((shape[1], shape[0]), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def render(labels: Labels, size: int, rng: np.random.Generator, supersample: int | None = None) -> Image.Image:
    """One RGB photograph of a vessel with these labels; all variation comes from `rng`."""
    supersample = supersample or (2 if size < 256 else 1)  # large images need no anti-aliasing pass
    s = size * supersample
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    kind = labels.type
    _, aspect, open_mouth, extras = PROFILES[kind]
    aspect *= {"song": 1.1, "yuan": 0.92}.get(labels.dynasty or "", 1.0) * rng.uniform(0.93, 1.07)

    # Backdrop: tinted gradient with vignette; a table edge on some photos.
    back = BACKDROPS[rng.integers(len(BACKDROPS))] * rng.uniform(0.8, 1.15) + rng.normal(0, 0.05, 3)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * xx + np.sin(direction) * yy) / s - 0.5
    grad = 1.0 + rng.uniform(0.05, 0.4) * ramp
    vignette = 1.0 - rng.uniform(0.05, 0.35) * (((xx - s / 2) ** 2 + (yy - s / 2) ** 2) / (s * s / 2))
    cloth = 1.0 + rng.uniform(0.0, 0.12) * (_smooth_noise(rng, (s, s), max(2, s // rng.integers(6, 24))) - 0.5)
    canvas = np.clip(back[None, None, :] * (grad * vignette * cloth)[..., None], 0, 1)
    if rng.random() < 0.4:  # a table or plinth edge behind the piece
        edge = s * rng.uniform(0.55, 0.8)
        canvas = np.where((yy > edge)[..., None], canvas * rng.uniform(0.6, 1.3), canvas)

    # Pose and scale: fit the silhouette in the frame, then shrink and shift it a little.
    scale = rng.uniform(0.6, 0.95)
    r_px = scale * min(0.40 * s, 0.80 * s / (2 * aspect))
    height = 2 * r_px * aspect
    cx = s / 2 + rng.uniform(-0.1, 0.1) * s * (1.0 - scale + 0.3)
    top = (s - height) / 2 + rng.uniform(-0.06, 0.06) * s + (0.04 * s if open_mouth else 0)
    bottom = top + height

    # Soft contact shadow.
    shadow = np.exp(-(((xx - cx) / (1.1 * r_px)) ** 2 + ((yy - bottom) / (0.12 * r_px + 2)) ** 2) * 2.0)
    canvas *= (1.0 - 0.45 * shadow)[..., None]

    t = np.clip((yy - top) / height, 0, 1)
    r = _profile(kind, t, labels.dynasty) * r_px
    u = np.where(r > 0, (xx - cx) / np.maximum(r, 1e-3), 9.0)
    inside = (np.abs(u) < 1.0) & (yy >= top) & (yy <= bottom)
    if kind == "pillow":  # a box with a concave top, not a lathe form
        sag = 0.18 * height * (1 - ((xx - cx) / r_px) ** 2)
        inside = (np.abs(xx - cx) < r_px) & (yy >= top + sag) & (yy <= bottom)
        u = np.clip((xx - cx) / r_px, -1, 1) * 0.6

    # Extras drawn as masks at full resolution.
    extra = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(extra)
    side = 1 if rng.random() < 0.5 else -1
    if "spout" in extras:
        y0 = top + 0.45 * height
        x0 = cx + side * 0.8 * r_px
        draw.polygon([(x0, y0), (x0, y0 + 0.18 * height), (x0 + side * 0.55 * r_px, y0 - 0.25 * height),
                      (x0 + side * 0.6 * r_px, y0 - 0.2 * height)], fill=255)
    if "small_spout" in extras:
        y0 = top + 0.35 * height
        x0 = cx + side * 0.7 * r_px
        draw.line([(x0, y0), (x0 + side * 0.35 * r_px, y0 - 0.2 * height)], fill=255, width=max(2, int(0.08 * r_px)))
    if "handle" in extras:
        hx = cx - side * 0.95 * r_px
        draw.arc([hx - 0.35 * r_px, top + 0.05 * height, hx + 0.35 * r_px, top + 0.55 * height],
                 90 if side > 0 else 270, 270 if side > 0 else 90, fill=255, width=max(2, int(0.1 * r_px)))
    if "ears" in extras:
        for sgn in (-1, 1):
            ex = cx + sgn * 1.0 * r_px
            draw.ellipse([ex - 0.18 * r_px, top + 0.05 * height, ex + 0.18 * r_px, top + 0.3 * height],
                         outline=255, width=max(2, int(0.08 * r_px)))
    if "legs" in extras:
        for lx in (-0.6, 0.0, 0.6):
            x0 = cx + lx * r_px
            draw.polygon([(x0 - 0.12 * r_px, top + 0.75 * height), (x0 + 0.12 * r_px, top + 0.75 * height),
                          (x0 + 0.05 * r_px, bottom), (x0 - 0.05 * r_px, bottom)], fill=255)
    if "cloud_feet" in extras:
        for lx in (-0.7, -0.25, 0.25, 0.7):
            x0 = cx + lx * r_px
            draw.ellipse([x0 - 0.1 * r_px, top + 0.7 * height, x0 + 0.1 * r_px, bottom], fill=255)
    extra_mask = np.asarray(extra, dtype=np.float32) / 255.0 > 0.5
    body = inside | extra_mask

    # Glaze colour with per-piece variation (glaze thickness, firing).
    base, gloss, glaze_texture = GLAZES[labels.glaze]
    colour = np.clip(np.array(base) + rng.normal(0, 0.03, 3), 0, 1)
    decoration, foot_colour = KILNS.get(labels.kiln or "", ("", (0.85, 0.82, 0.76)))

    # Lambert + Blinn-Phong shading on the lathe normal.
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.6, -0.1), 1.0])
    light /= np.linalg.norm(light)
    uu = np.clip(u, -1, 1)
    nz = np.sqrt(np.clip(1 - uu**2, 0, 1))
    normal = np.stack([uu, np.full_like(uu, -0.15), nz], axis=-1)
    diffuse = np.clip((normal * light).sum(-1), 0, 1)
    half = light + np.array([0, 0, 1.0])
    half /= np.linalg.norm(half)
    spec = np.clip((normal * half).sum(-1), 0, 1) ** (10 + 60 * gloss) * (0.25 + 0.75 * gloss)
    albedo = np.broadcast_to(colour, (s, s, 3)).copy()

    angle = np.arcsin(uu)  # position around the vessel, so patterns wrap with the surface
    _decorate(albedo, decoration, glaze_texture, labels, angle, t, xx, yy, rng, colour, body)
    foot = body & (t > 0.93) & ~extra_mask
    albedo[foot] = np.array(foot_colour) * rng.uniform(0.9, 1.05)

    shade = 0.38 + 0.62 * diffuse
    vessel = albedo * shade[..., None] + spec[..., None] * 0.9
    canvas = np.where(body[..., None], vessel, canvas)

    if open_mouth:  # interior seen through the mouth: an ellipse, darker, lit from the other side
        r0 = _profile(kind, np.zeros(1), labels.dynasty)[0] * r_px
        ey = r0 * rng.uniform(0.18, 0.34) * (2.2 if kind in ("plate", "dish", "washer") else 1.0)
        ell = ((xx - cx) / r0) ** 2 + ((yy - top) / max(ey, 1.0)) ** 2
        interior = ell < 0.9
        rim = (ell >= 0.9) & (ell < 1.0)
        inner_shade = 0.55 + 0.35 * np.clip((xx - cx) / r0 * -light[0] + 0.5, 0, 1)
        canvas = np.where(interior[..., None], albedo * inner_shade[..., None], canvas)
        canvas = np.where(rim[..., None], np.clip(albedo * 1.08, 0, 1), canvas)
    else:  # mouth opening of a closed form
        r0 = _profile(kind, np.zeros(1), labels.dynasty)[0] * r_px
        mouth = ((xx - cx) / max(r0 * 0.8, 1)) ** 2 + ((yy - top) / max(r0 * 0.22, 1)) ** 2 < 1
        canvas = np.where(mouth[..., None], albedo * 0.35, canvas)

    # Photographic nuisance: white balance, exposure, sensor noise.
    canvas = canvas * (1 + rng.normal(0, 0.045, 3)) * rng.uniform(0.85, 1.12)
    canvas = canvas + rng.normal(0, rng.uniform(0.005, 0.025), canvas.shape)
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * supersample))
    return img.resize((size, size), Image.LANCZOS)


def _decorate(albedo: np.ndarray, decoration: str, glaze_texture: str, labels: Labels, angle: np.ndarray,
              t: np.ndarray, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator,
              colour: np.ndarray, body: np.ndarray) -> None:
    """Kiln decoration and glaze texture, written into the albedo where the vessel body is."""
    s = albedo.shape[0]

    def paint(mask: np.ndarray, rgb, strength: float | np.ndarray = 1.0) -> None:
        mask = mask & body
        alpha = strength[mask][:, None] if isinstance(strength, np.ndarray) else strength
        albedo[mask] = albedo[mask] * (1 - alpha) + np.asarray(rgb) * alpha

    if glaze_texture == "cobalt" or (decoration == "painted" and labels.glaze in ("white", "transparent")):
        ink = np.array([0.12, 0.18, 0.50]) if glaze_texture == "cobalt" else np.array([0.12, 0.09, 0.07])
        ink = ink + rng.normal(0, 0.03, 3)
        for band in rng.uniform(0.05, 0.95, rng.integers(1, 4)):
            paint(np.abs(t - band) < 0.012, ink, 0.9)
        freq, phase, centre = rng.integers(2, 6), rng.uniform(0, 6.3), rng.uniform(0.35, 0.65)
        scroll = np.abs(np.sin(freq * angle * 2 + phase) * 0.12 - (t - centre)) < 0.025
        paint(scroll, ink, 0.85)
        leaves = _smooth_noise(rng, (s, s), max(4, s // 10)) > 0.8
        paint(leaves & (np.abs(t - centre) < 0.2), ink, 0.75)
    if glaze_texture == "splash" or decoration == "splash":
        blobs = _smooth_noise(rng, (s, s), max(4, s // 8))
        splash_colour = np.array([0.55, 0.18, 0.38]) if labels.glaze != "rose_purple" else np.array([0.45, 0.55, 0.75])
        paint(blobs > rng.uniform(0.6, 0.75), splash_colour, 0.6)
    if decoration in ("dark_crackle", "pale_crackle", "fine_crackle", "crazing"):
        cells, width, rgb, alpha = {
            "dark_crackle": (60, 2.0, (0.12, 0.10, 0.08), 0.8),
            "pale_crackle": (35, 1.6, (0.85, 0.80, 0.65), 0.5),
            "fine_crackle": (90, 1.0, colour * 0.75, 0.35),
            "crazing": (50, 1.0, colour * 0.8, 0.3),
        }[decoration]
        paint(np.ones_like(body), rgb, _voronoi_edges(xx, yy, rng, cells, width) * alpha)
    if decoration == "hares_fur" and labels.glaze in ("black", "brown"):
        streaks = np.interp(angle, np.linspace(-1.6, 1.6, 90), rng.random(90))
        strength = np.clip((streaks - 0.45) * 2.2, 0, 1) * np.clip(1.2 - t, 0, 1)
        paint(np.ones_like(body), np.array([0.55, 0.32, 0.16]) + rng.normal(0, 0.04, 3), strength * 0.8)
    if decoration == "tortoiseshell":
        spots = _smooth_noise(rng, (s, s), max(3, s // 16))
        paint(spots > 0.7, np.array([0.78, 0.62, 0.30]), 0.75)
    if decoration == "flambe":
        streaks = np.interp(angle * 3 + t * 2, np.linspace(-6, 7, 60), rng.random(60))
        paint(np.ones_like(body), np.array([0.35, 0.45, 0.70]), np.clip(streaks - 0.3, 0, 1) * 0.7)
    if decoration == "petals":
        ribs = 0.5 + 0.5 * np.cos(angle * rng.integers(8, 14))
        paint(t > 0.55, colour * 0.82, ribs * 0.5)
    if decoration in ("carved", "incised"):
        depth = 0.7 if decoration == "carved" else 0.85
        lines = np.abs(np.sin(angle * rng.integers(3, 7) + t * rng.uniform(4, 9))) < (0.08 if decoration == "carved"
                                                                                       else 0.05)
        paint(lines & (t > 0.15) & (t < 0.85), colour * depth, 0.8)
    if decoration == "metal_rim":
        paint(t < 0.03, np.array([0.62, 0.48, 0.28]), 0.9)
    if decoration == "speckle":
        paint(rng.random(body.shape) < 0.004, np.array([0.35, 0.25, 0.18]), 0.9)
