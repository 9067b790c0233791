"""Synthetic scenes: dataset styles, cluttered backgrounds, platform jitter, target tracks and spots.

Per sequence: a cluttered grey background (smooth 1/f structure, clouds, a horizon, bright
edges, static point-like false targets; mean ~105, frame std ~15-25, local std ~4-9), platform jitter (a small
sub-pixel global translation per frame), 2-D Gaussian targets on constant-velocity tracks with slow turns and
acceleration that may enter or leave the view or vanish for a while, and low, spatially correlated pixel noise
(real clean frames are smooth at the pixel scale). `STYLES` holds the per-dataset parameters, calibrated
against the real datasets' statistics.

Everything is drawn from `numpy.random.default_rng` streams keyed by (seed, style, sequence number): see
`rng_for`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NUDT_LOW_SNR_NUMBERS = (47, 56, 59, 76, 92, 101, 105, 119)
NUDT_TEST_NUMBERS = (85, 86, 87, 88, 89, 90, 91, 93, 94, 95, 96, 97)
STYLE_CODES = {"nudt": 0, "daub": 1, "itsdt": 2, "irdst": 3}


@dataclass(frozen=True)
class Style:
    """Defaults and target statistics of one dataset style (calibrated on ../shared/reference stats)."""

    name: str
    size: tuple[int, int]  # (H, W)
    frames: int  # frames per sequence
    seqs: tuple[int, int, int]  # (train, val, test) sequences
    snr: tuple[float, float]  # SNR range (NUDT: the high-SNR sequences)
    targets: tuple[int, int]  # targets per sequence, inclusive range
    count_weights: tuple[float, ...] | None  # weights of the counts in `targets`, None = uniform
    sigma_x: tuple[float, float]  # Gaussian sigma along x (px)
    sigma_y: tuple[float, float] | None  # sigma along y; None: sigma_x times U(0.8, 1.25)
    speed: tuple[float, float, float, float]  # lognormal median, log-spread, min, max (px/frame)
    p_enter: float  # probability that a target enters the view during the sequence
    p_leave: float  # probability that it leaves
    p_gap: float  # probability that it vanishes for a while (occlusion, too weak)
    mask_frac: float  # mask = target > mask_frac * amplitude
    max_radius: int  # half-size of the rendered spot (NUDT: extent <= 9x9)
    fixed_box: int  # 0: tight box of the mask; else a fixed square box (DAUB: 8)
    jitter: float  # std of the platform jitter (px), clipped to +-2
    noise: float  # std of the clean variant's spatially correlated pixel noise (grey levels)


STYLES: dict[str, Style] = {
    # NUDT-MIRSDT: pixel noise 0.1 grey levels. The official DeepPro-Plus fires on temporal flicker of flat
    # sky (i.i.d. noise >= 1 grey level, and already ~1e-3 of the pixels at 0.25 through 8-bit rounding);
    # at 0.1 it stays quiet and both official models detect the low-SNR targets.
    "nudt": Style("nudt", (128, 160), 100, (8, 1, 4), (4.0, 9.0), (1, 3), None, (0.6, 1.3), None,
                  (0.8, 0.6, 0.2, 3.0), 0.15, 0.15, 0.1, 0.2, 4, 0, 0.15, 0.1),
    # DAUB: one target per frame, always in view, 8x8 boxes, median speed 1 px/frame.
    "daub": Style("daub", (256, 256), 40, (4, 1, 2), (4.0, 10.0), (1, 1), None, (0.8, 1.3), None,
                  (0.6, 0.6, 0.05, 4.0), 0.0, 0.0, 0.0, 0.2, 4, 8, 0.3, 0.5),
    # ITSDT-15K: 1-7 targets (mostly 3-4), boxes ~13-24 x 8-13 px, median speed 0.7 px/frame.
    "itsdt": Style("itsdt", (240, 320), 40, (4, 1, 2), (4.0, 10.0), (1, 7),
                   (462, 1085, 2785, 3258, 843, 1034, 464), (3.0, 6.0), (2.0, 3.2),
                   (0.5, 0.75, 0.05, 4.0), 0.08, 0.08, 0.0, 0.1, 16, 0, 0.3, 0.5),
    # IRDST: 1-2 targets (2 in ~3% of frames), boxes ~7x7, fast: median 3.5, 90th percentile ~14 px/frame.
    "irdst": Style("irdst", (256, 320), 40, (4, 1, 2), (3.0, 8.0), (1, 2), (0.9, 0.1), (1.4, 2.1), None,
                   (3.2, 1.3, 0.05, 16.0), 0.03, 0.03, 0.0, 0.1, 6, 0, 0.3, 0.5),
}
NUDT_LOW_SNR = (1.5, 2.8)


@dataclass
class Rendered:
    """One rendered sequence. K targets, N frames."""

    frames: np.ndarray  # uint8 [N, H, W]
    masks: np.ndarray  # bool [N, H, W]
    centroids: np.ndarray  # bool [N, H, W]
    boxes: np.ndarray  # int64 [K, N, 4] (x1, y1, x2, y2), valid where `present`
    present: np.ndarray  # bool [K, N]: the target has mask pixels in the frame
    centres: np.ndarray  # float64 [K, N, 2] (y, x) sub-pixel centres
    snr: list[float | None]  # realised SNR per target (None: never measurable)
    targets: list[dict]  # per-target parameters for the metadata


def rng_for(seed: int, style: str, number: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STYLE_CODES[style], number, stream)))


# ----------------------------------------------------------------------------------------------- background
def fractal_field(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-std 1/f^beta (power spectrum) random field, float32 [h, w]."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) * f ** (-beta / 2)
    spec[0, 0] = 0.0
    field = np.fft.irfft2(spec, s=(h, w))
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _gaussian_spots(h: int, w: int, ys, xs, sigmas, amps) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    for y, x, s, a in zip(ys, xs, sigmas, amps):
        r = int(math.ceil(3 * s))
        y0, y1 = max(int(y) - r, 0), min(int(y) + r + 2, h)
        x0, x1 = max(int(x) - r, 0), min(int(x) + r + 2, w)
        yy = np.arange(y0, y1)[:, None] - y
        xx = np.arange(x0, x1)[None, :] - x
        out[y0:y1, x0:x1] += a * np.exp(-(yy * yy + xx * xx) / (2 * s * s))
    return out


def make_background(rng: np.random.Generator, h: int, w: int, canvas: int = 384) -> np.ndarray:
    """A cluttered infrared scene in grey levels, float32 [h, w], smooth at the pixel scale.

    Sky (clouds), ground (texture and bright or dark edges) or a horizon between both, drawn on a canvas of
    at least `canvas` px a side (so the local structure does not depend on the frame size) and cropped;
    plus static point-like false targets. Canvas mean ~U(90, 120), std ~U(18, 32); the local std over a
    31 px window is ~4-9 grey levels.
    """
    ch, cw = max(h, canvas), max(w, canvas)
    kind = rng.choice(["sky", "ground", "horizon"])
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    base = fractal_field(rng, ch, cw, rng.uniform(3.6, 4.2))
    clouds = fractal_field(rng, ch, cw, rng.uniform(2.8, 3.4))
    sky = base + rng.uniform(0.6, 1.6) / (1 + np.exp(-(clouds - rng.uniform(0.0, 0.8)) / 0.25))
    ground = base + rng.uniform(0.15, 0.4) * fractal_field(rng, ch, cw, rng.uniform(2.2, 2.7))
    # Bright and dark edges (roads, field borders, buildings): blurred line segments.
    for _ in range(rng.integers(2, 7)):
        y0, x0 = rng.uniform(0, ch), rng.uniform(0, cw)
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8) * max(ch, cw)
        dy, dx = np.sin(ang), np.cos(ang)
        t = np.clip((yy - y0) * dy + (xx - x0) * dx, -length / 2, length / 2)
        d2 = (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2
        amp, width = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.2), rng.uniform(0.7, 1.6)
        ground += amp * np.exp(-d2 / (2 * width * width))
    if kind == "sky":
        img = sky
    elif kind == "ground":
        img = ground
    else:
        row = ch * rng.uniform(0.3, 0.7) + rng.uniform(-0.15, 0.15) * (xx[0] - cw / 2)
        row = row + rng.uniform(1, 4) * fractal_field(rng, 1, cw, 3.0)[0]
        sky_part = 1 / (1 + np.exp(np.clip((yy - row[None, :]) / 0.7, -30, 30)))
        img = sky_part * (sky + rng.uniform(0.5, 1.5)) + (1 - sky_part) * ground
    img = (img - img.mean()) / (img.std() + 1e-6) * rng.uniform(18, 32) + rng.uniform(90, 120)
    y0, x0 = int(rng.integers(0, ch - h + 1)), int(rng.integers(0, cw - w + 1))
    img = img[y0:y0 + h, x0:x0 + w]
    n_spots = rng.integers(2, 9)
    img = img + _gaussian_spots(h, w, rng.uniform(0, h, n_spots), rng.uniform(0, w, n_spots),
                                rng.uniform(0.6, 1.4, n_spots), rng.uniform(8, 40, n_spots))
    return img.astype(np.float32)


def jitter_offsets(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    """AR(1) platform jitter [n, 2] with stationary std `std`, clipped to +-2 px."""
    rho = 0.7
    eps = rng.standard_normal((n, 2)) * std * math.sqrt(1 - rho * rho)
    out = np.zeros((n, 2))
    state = rng.standard_normal(2) * std
    for t in range(n):
        state = rho * state + eps[t]
        out[t] = state
    return np.clip(out, -2.0, 2.0)


def shift_frame(bg: np.ndarray, oy: float, ox: float, h: int, w: int) -> np.ndarray:
    """Bilinear crop [h, w] of `bg` at the fractional top-left corner (oy, ox)."""
    iy, ix = int(math.floor(oy)), int(math.floor(ox))
    fy, fx = np.float32(oy - iy), np.float32(ox - ix)
    top = (1 - fx) * bg[iy:iy + h, ix:ix + w] + fx * bg[iy:iy + h, ix + 1:ix + 1 + w]
    bot = (1 - fx) * bg[iy + 1:iy + 1 + h, ix:ix + w] + fx * bg[iy + 1:iy + 1 + h, ix + 1:ix + 1 + w]
    return (1 - fy) * top + fy * bot


def correlated_noise(rng: np.random.Generator, h: int, w: int, std: float) -> np.ndarray:
    """Spatially correlated noise [h, w] with std `std`: uniform noise smoothed by [1, 2, 1] x [1, 2, 1]
    (a weighted sum of 16 uniforms per pixel, close to Gaussian, three times cheaper to draw)."""
    z = rng.random((h + 2, w + 2), dtype=np.float32)
    r = z[:-2] + z[2:]
    r += 2 * z[1:-1]
    c = r[:, :-2] + r[:, 2:]
    c += 2 * r[:, 1:-1]
    c -= np.float32(8.0)  # the kernel sums to 16, uniforms have mean 0.5
    c *= np.float32(std * math.sqrt(12.0) / 6.0)
    return c


# ------------------------------------------------------------------------------------------------ targets
def _border_point(c: np.ndarray, u: np.ndarray, h: int, w: int) -> np.ndarray:
    """Where the ray from c along unit u leaves the box [0, h-1] x [0, w-1]."""
    ts = []
    for k, hi in ((0, h - 1), (1, w - 1)):
        if u[k] > 1e-9:
            ts.append((hi - c[k]) / u[k])
        elif u[k] < -1e-9:
            ts.append(-c[k] / u[k])
    return c + min(ts) * u


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect positions into [lo, hi] (a target bouncing off the margins)."""
    span = max(hi - lo, 1e-6)
    u = np.mod(p - lo, 2 * span)
    return lo + span - np.abs(u - span)


def spot_radius(st: Style, sx: float, sy: float) -> int:
    """Half-size of the rendered spot of a target with sigmas (sx, sy): 3 sigma, capped by the style."""
    return max(1, min(st.max_radius, int(math.ceil(3 * max(sx, sy)))))


def track_margin(st: Style, radius: int) -> float:
    """Distance a track inside the view keeps from the border (px)."""
    return max(4.0, radius + 1.0, st.fixed_box / 2 + 1.0)


def min_frame_side(st: Style) -> int:
    """Smallest frame side (px) that leaves room for the style's largest target inside its margins."""
    s_max = max(st.sigma_x[1], st.sigma_y[1] if st.sigma_y is not None else st.sigma_x[1])
    return int(math.ceil(2 * track_margin(st, spot_radius(st, s_max, s_max)))) + 2


def make_track(rng: np.random.Generator, st: Style, n: int, h: int, w: int, margin: float):
    """Sub-pixel centres [n, 2] (y, x), intensity factor [n] (0 = invisible) and the nominal speed."""
    med, spread, vmin, vmax = st.speed
    s0 = float(np.clip(med * math.exp(spread * rng.standard_normal()), vmin, vmax))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.01) + rng.normal(0, 0.02, n))
    speed = s0 * np.exp(rng.uniform(-0.4, 0.4) * (np.arange(n) / max(n - 1, 1) - 0.5))
    vel = np.stack([speed * np.sin(heading), speed * np.cos(heading)], 1)
    disp = np.cumsum(vel, 0) - vel[0]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    mode = rng.choice(["inside", "enter", "leave"], p=[1 - st.p_enter - st.p_leave, st.p_enter, st.p_leave])
    if mode == "inside":
        start = np.array([rng.uniform(margin, h - 1 - margin), rng.uniform(margin, w - 1 - margin)])
        pos = start + disp
        pos = np.stack([_fold(pos[:, 0], margin, h - 1 - margin),
                        _fold(pos[:, 1], margin, w - 1 - margin)], 1)
    else:
        lo, hi = (0.05, 0.6) if mode == "enter" else (0.4, 0.95)
        tc = int(rng.uniform(lo, hi) * (n - 1))
        u = vel[tc] / (np.linalg.norm(vel[tc]) + 1e-12)
        sign = -1.0 if mode == "enter" else 1.0
        cross = _border_point(centre, sign * u, h, w) + sign * u * margin
        pos = cross - disp[tc] + disp
    amp = np.ones(n)
    fl = rng.normal(0, 0.05, n)
    for t in range(1, n):  # smooth intensity fluctuation (+-~15%)
        fl[t] = 0.8 * fl[t - 1] + fl[t]
    amp = np.clip(amp + fl, 0.6, 1.4)
    if rng.random() < st.p_gap:
        g0 = int(rng.uniform(0.1, 0.7) * n)
        amp[g0:g0 + max(1, int(rng.uniform(0.1, 0.3) * n))] = 0.0
    return pos, amp, s0


@dataclass
class Spot:
    yy: np.ndarray  # int [N, P] pixel rows of the patch
    xx: np.ndarray  # int [N, P] pixel columns
    unit: np.ndarray  # float32 [N, P, P] unit-amplitude Gaussian
    valid: np.ndarray  # bool [N, P, P] inside the frame
    flat: np.ndarray  # int64 [N, P, P] index into frames.reshape(-1) (garbage where not valid)


def render_spot(pos: np.ndarray, sx: float, sy: float, radius: int, h: int, w: int) -> Spot:
    n = len(pos)
    off = np.arange(-radius, radius + 1)
    cy = np.rint(pos[:, 0]).astype(np.int64)
    cx = np.rint(pos[:, 1]).astype(np.int64)
    yy = cy[:, None] + off[None, :]
    xx = cx[:, None] + off[None, :]
    gy = np.exp(-((yy - pos[:, :1]) ** 2) / (2 * sy * sy)).astype(np.float32)
    gx = np.exp(-((xx - pos[:, 1:]) ** 2) / (2 * sx * sx)).astype(np.float32)
    unit = gy[:, :, None] * gx[:, None, :]
    valid = ((yy >= 0) & (yy < h))[:, :, None] & ((xx >= 0) & (xx < w))[:, None, :]
    rows = np.arange(n)[:, None, None] * h + np.clip(yy, 0, h - 1)[:, :, None]
    flat = rows * w + np.clip(xx, 0, w - 1)[:, None, :]
    return Spot(yy, xx, unit, valid, flat)


def ring_offsets(r_in: float, r_out: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(math.ceil(r_out))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    d = np.hypot(oy, ox)
    sel = (d >= r_in) & (d <= r_out)
    return oy[sel], ox[sel]


def local_stats(frames: np.ndarray, cy: np.ndarray, cx: np.ndarray, ring, exclude: np.ndarray):
    """Per frame: value at (cy, cx), ring mean, ring std, ring pixel count (excluded pixels dropped)."""
    n, h, w = frames.shape
    ry = cy[:, None] + ring[0][None, :]
    rx = cx[:, None] + ring[1][None, :]
    inb = (ry >= 0) & (ry < h) & (rx >= 0) & (rx < w)
    ryc, rxc = np.clip(ry, 0, h - 1), np.clip(rx, 0, w - 1)
    idx = np.arange(n)[:, None]
    wgt = (inb & ~exclude[idx, ryc, rxc]).astype(np.float64)
    vals = frames[idx, ryc, rxc].astype(np.float64)
    cnt = wgt.sum(1)
    mean = (vals * wgt).sum(1) / np.maximum(cnt, 1)
    std = np.sqrt((wgt * (vals - mean[:, None]) ** 2).sum(1) / np.maximum(cnt, 1))
    peak = frames[np.arange(n), np.clip(cy, 0, h - 1), np.clip(cx, 0, w - 1)].astype(np.float64)
    return peak, mean, std, cnt


def quantise(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


