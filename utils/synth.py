"""Synthetic moving infrared small-target sequences, written in the real on-disk formats.

    python make_synthetic.py --format nudt --out data/nudt_synth --preview
    python make_synthetic.py --format nudt --noise --out data/nudt_synth_noise   # Noise variant
    python make_synthetic.py --format coco --style itsdt --out data/itsdt_synth

Recipe (spec/synthetic.md). Per sequence: a cluttered grey background (smooth 1/f structure, clouds, a
horizon, bright edges, static point-like false targets; mean ~105, frame std ~15-25, local std ~4-9), platform
jitter (a small sub-pixel global translation per frame), 2-D Gaussian targets on constant-velocity tracks
with slow turns and acceleration that may enter or leave the view or vanish for a while, and low, spatially
correlated pixel noise (real clean frames are smooth at the pixel scale). The Noise variant adds i.i.d.
Gaussian noise (sigma 8) and column non-uniformity (gain 0.15 on the local contrast, offset 1.3 grey levels)
to the same clean frames, so its masks equal the clean dataset's.

Target amplitudes are set from a per-sequence SNR and the realised SNR of every target is measured on the
written 8-bit frames and stored in `synth_meta.json`:

    SNR = mean_t(peak_t - ring_mean_t) / mean_t(ring_std_t)

with peak_t the frame value at the target's brightest pixel and the ring the pixels 5..15 px from it (wider
for large targets), other targets excluded, over the frames where the target is visible. Truth: masks are the
pixels where a target exceeds `mask_frac` of its amplitude (its brightest pixel always included), centroid
masks one pixel per target at the mask centroid, boxes the tight box of each target's mask (DAUB style: a
fixed 8x8 box centred on the target, like the real annotations).

Everything is drawn from `numpy.random.default_rng` streams keyed by (seed, style, sequence number), so a
seed gives the same bytes in every file, and a sequence does not depend on how many others are written.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from utils.errors import ConfigError

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


def _rng(seed: int, style: str, number: int, stream: int) -> np.random.Generator:
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


def _jitter_offsets(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    """AR(1) platform jitter [n, 2] with stationary std `std`, clipped to +-2 px."""
    rho = 0.7
    eps = rng.standard_normal((n, 2)) * std * math.sqrt(1 - rho * rho)
    out = np.zeros((n, 2))
    state = rng.standard_normal(2) * std
    for t in range(n):
        state = rho * state + eps[t]
        out[t] = state
    return np.clip(out, -2.0, 2.0)


def _shift(bg: np.ndarray, oy: float, ox: float, h: int, w: int) -> np.ndarray:
    """Bilinear crop [h, w] of `bg` at the fractional top-left corner (oy, ox)."""
    iy, ix = int(math.floor(oy)), int(math.floor(ox))
    fy, fx = np.float32(oy - iy), np.float32(ox - ix)
    top = (1 - fx) * bg[iy:iy + h, ix:ix + w] + fx * bg[iy:iy + h, ix + 1:ix + 1 + w]
    bot = (1 - fx) * bg[iy + 1:iy + 1 + h, ix:ix + w] + fx * bg[iy + 1:iy + 1 + h, ix + 1:ix + 1 + w]
    return (1 - fy) * top + fy * bot


def _correlated_noise(rng: np.random.Generator, h: int, w: int, std: float) -> np.ndarray:
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
class _Spot:
    yy: np.ndarray  # int [N, P] pixel rows of the patch
    xx: np.ndarray  # int [N, P] pixel columns
    unit: np.ndarray  # float32 [N, P, P] unit-amplitude Gaussian
    valid: np.ndarray  # bool [N, P, P] inside the frame
    flat: np.ndarray  # int64 [N, P, P] index into frames.reshape(-1) (garbage where not valid)


def _spot(pos: np.ndarray, sx: float, sy: float, radius: int, h: int, w: int) -> _Spot:
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
    return _Spot(yy, xx, unit, valid, flat)


def _ring(r_in: float, r_out: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(math.ceil(r_out))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    d = np.hypot(oy, ox)
    sel = (d >= r_in) & (d <= r_out)
    return oy[sel], ox[sel]


def _local_stats(frames: np.ndarray, cy: np.ndarray, cx: np.ndarray, ring, exclude: np.ndarray):
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


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def render_sequence(seed: int, st: Style, number: int, size: tuple[int, int], n_frames: int, snr: float,
                    n_targets: int, noise_variant: bool = False) -> Rendered:
    """Render one sequence: frames, truth and realised SNR (see the module docstring).

    `number` keys the random streams (the sequence's name number). `noise_variant` returns the Noise
    variant's frames of the very same clean sequence (masks and boxes unchanged).
    """
    h, w = size
    rng = _rng(seed, st.name, number, 0)
    pad = 3
    bg = make_background(rng, h + 2 * pad, w + 2 * pad)
    jit = _jitter_offsets(rng, n_frames, st.jitter)
    clean = np.empty((n_frames, h, w), np.float32)
    for t in range(n_frames):
        clean[t] = _shift(bg, pad + jit[t, 0], pad + jit[t, 1], h, w)
        clean[t] += _correlated_noise(rng, h, w, st.noise)

    spots, amps, params = [], [], []
    for _ in range(n_targets):
        if st.sigma_y is None:
            sx = rng.uniform(*st.sigma_x)
            sy = float(np.clip(sx * rng.uniform(0.8, 1.25), *st.sigma_x))
        else:
            sx, sy = rng.uniform(*st.sigma_x), rng.uniform(*st.sigma_y)
        radius = max(1, min(st.max_radius, int(math.ceil(3 * max(sx, sy)))))
        margin = max(4.0, radius + 1.0, st.fixed_box / 2 + 1.0)
        pos, amp, s0 = make_track(rng, st, n_frames, h, w, margin)
        spots.append((_spot(pos, sx, sy, radius, h, w), pos, radius))
        amps.append(amp)
        params.append({"sigma": [round(float(sx), 3), round(float(sy), 3)], "speed": round(s0, 3)})

    # Pixels near any target: excluded from the local background rings.
    support = np.zeros(n_frames * h * w, bool)
    for sp, _, _ in spots:
        support[sp.flat[sp.valid & (sp.unit > 0.01)]] = True
    support = support.reshape(n_frames, h, w)

    def measure(frames: np.ndarray, k: int):
        sp, _, radius = spots[k]
        c = radius
        cy, cx = sp.yy[:, c], sp.xx[:, c]
        ring = _ring(max(5.0, radius + 1.0), max(5.0, radius + 1.0) + 10.0)
        peak, mean, std, cnt = _local_stats(frames, cy, cx, ring, support)
        ok = sp.valid[:, c, c] & (amps[k] > 0) & (cnt >= 0.3 * len(ring[0]))
        return peak, mean, std, ok

    # Amplitudes: solve mean(peak - ring mean) = snr * mean(ring std) on the clean float frames.
    gains = []
    for k, (sp, _, radius) in enumerate(spots):
        peak, mean, std, ok = measure(clean, k)
        g = amps[k] * sp.unit[:, radius, radius]
        if ok.any():
            a = (snr * std[ok].mean() - (peak - mean)[ok].mean()) / g[ok].mean()
        else:
            a = snr * 4.0
        gains.append(max(float(a), 1.0))

    # Only the pixels under the targets change: quantise the clean frames once, then re-render those pixels.
    touched = np.unique(np.concatenate([sp.flat[sp.valid] for sp, _, _ in spots] + [np.zeros(0, np.int64)]))
    slots = [np.searchsorted(touched, sp.flat[sp.valid]) for sp, _, _ in spots]
    clean_flat = clean.reshape(-1)

    def target_values(gains: list[float]) -> np.ndarray:
        vals = clean_flat[touched].copy()
        for (sp, _, _), amp, a, slot in zip(spots, amps, gains, slots):
            vals[slot] += (a * amp[:, None, None] * sp.unit)[sp.valid].astype(np.float32)
        return vals

    def compose(gains: list[float]) -> np.ndarray:
        out = base_q.copy()
        out.reshape(-1)[touched] = _quantise(target_values(gains))
        return out

    def realised(frames: np.ndarray) -> list[tuple[float, float, np.ndarray] | None]:
        """Per target: (mean peak - ring mean, mean ring std, frames used) or None if never measurable."""
        res = []
        for k in range(len(spots)):
            peak, mean, std, ok = measure(frames, k)
            res.append(((peak - mean)[ok].mean(), std[ok].mean(), ok) if ok.any() else None)
        return res

    base_q = _quantise(clean)
    frames = compose(gains)
    # One correction step for quantisation and clipping: move each amplitude by the SNR shortfall.
    for k, r in enumerate(realised(frames)):
        if r is not None:
            sp, _, radius = spots[k]
            g = amps[k] * sp.unit[:, radius, radius]
            gains[k] = max(gains[k] + (snr * r[1] - r[0]) / max(float(g[r[2]].mean()), 1e-3), 1.0)
    frames = compose(gains)

    if noise_variant:
        nrng = _rng(seed, st.name, number, 1)
        mu = np.float32(clean.mean())
        gain_col = (1 + 0.15 * nrng.standard_normal(w)).astype(np.float32)
        offset_col = (1.3 * nrng.standard_normal(w)).astype(np.float32)
        with_targets = clean.copy()
        with_targets.reshape(-1)[touched] = target_values(gains)
        noisy = mu + (with_targets - mu) * gain_col + offset_col
        noisy += nrng.standard_normal(noisy.shape, dtype=np.float32) * np.float32(8.0)
        frames = _quantise(noisy)

    snr_out = []
    for r in realised(frames):
        snr_out.append(None if r is None or r[1] <= 0 else round(float(r[0] / r[1]), 3))

    # Truth: masks, centroids, boxes.
    k_n = len(spots)
    masks = np.zeros(n_frames * h * w, bool)
    cent = np.zeros((n_frames, h, w), bool)
    boxes = np.zeros((k_n, n_frames, 4), np.int64)
    present = np.zeros((k_n, n_frames), bool)
    centres = np.zeros((k_n, n_frames, 2))
    for k, ((sp, pos, radius), amp) in enumerate(zip(spots, amps)):
        m = (sp.unit >= st.mask_frac) & sp.valid & (amp > 0)[:, None, None]
        m[:, radius, radius] |= sp.valid[:, radius, radius] & (amp > 0)
        masks[sp.flat[m]] = True
        rows, cols = m.any(2), m.any(1)
        has = rows.any(1)
        present[k] = has
        centres[k] = pos
        p = m.shape[1]
        y1 = sp.yy[np.arange(n_frames), rows.argmax(1)]
        y2 = sp.yy[np.arange(n_frames), p - 1 - rows[:, ::-1].argmax(1)] + 1
        x1 = sp.xx[np.arange(n_frames), cols.argmax(1)]
        x2 = sp.xx[np.arange(n_frames), p - 1 - cols[:, ::-1].argmax(1)] + 1
        if st.fixed_box:
            half = st.fixed_box // 2
            y1 = np.clip(sp.yy[:, radius] - half, 0, h - st.fixed_box)
            x1 = np.clip(sp.xx[:, radius] - half, 0, w - st.fixed_box)
            y2, x2 = y1 + st.fixed_box, x1 + st.fixed_box
        boxes[k] = np.stack([x1, y1, x2, y2], 1)
        cnt = np.maximum(m.sum((1, 2)), 1)
        cyy = np.rint((m * sp.yy[:, :, None]).sum((1, 2)) / cnt).astype(np.int64)
        cxx = np.rint((m * sp.xx[:, None, :]).sum((1, 2)) / cnt).astype(np.int64)
        t_idx = np.nonzero(has)[0]
        cent[t_idx, np.clip(cyy[t_idx], 0, h - 1), np.clip(cxx[t_idx], 0, w - 1)] = True
        params[k]["amplitude"] = round(float(gains[k]), 3)
        params[k]["frames_present"] = int(has.sum())
        params[k]["snr"] = snr_out[k]
    return Rendered(frames, masks.reshape(n_frames, h, w), cent, boxes, present, centres, snr_out, params)


# ------------------------------------------------------------------------------------------------ datasets
@dataclass
class SynthConfig:
    """What to write. None means the style's default."""

    format: str = "nudt"  # nudt | coco
    style: str = "itsdt"  # coco style: itsdt | irdst | daub (nudt ignores it)
    out: str = "data/synthetic"
    seed: int = 0
    num_seqs: tuple[int, int, int] | None = None  # (train, val, test)
    frames: int | None = None
    size: tuple[int, int] | None = None
    snr_range: tuple[float, float] | None = None
    low_snr_range: tuple[float, float] = NUDT_LOW_SNR
    low_snr_seqs: int | None = None  # NUDT test sequences with SNR <= 3 (default: half)
    targets: tuple[int, int] | None = None
    noise: bool = False  # NUDT: write the Noise variant
    write_masks: bool = True  # NUDT Noise variant: False reads masks from the clean root
    preview: bool = False

    def style_obj(self) -> Style:
        st = STYLES["nudt" if self.format == "nudt" else self.style]
        if self.targets is not None:
            st = replace(st, targets=self.targets, count_weights=None)
        return st


@dataclass
class SeqPlan:
    name: str  # NUDT: "Sequence47"; COCO: folder under images/ ("3" or "train/data3")
    number: int
    split: str
    snr: float
    snr_label: str  # "low" (0, 3] or "high" (3, 10)
    n_targets: int
    size: tuple[int, int]


def plan_sequences(cfg: SynthConfig) -> list[SeqPlan]:
    """Names, splits, SNR and target counts of every sequence (deterministic from the seed)."""
    st = cfg.style_obj()
    n_train, n_val, n_test = cfg.num_seqs or st.seqs
    size = cfg.size or st.size
    lo, hi = cfg.snr_range or st.snr
    if not (0 < lo <= hi):
        raise ConfigError(f"--snr-range: need 0 < LO <= HI, got {lo} {hi}")
    rng = _rng(cfg.seed, st.name, 0, 2)
    counts = np.arange(st.targets[0], st.targets[1] + 1)
    weights = None
    if st.count_weights is not None:
        weights = np.asarray(st.count_weights, float) / sum(st.count_weights)
    plans: list[SeqPlan] = []
    if cfg.format == "nudt":
        n_low = (n_test + 1) // 2 if cfg.low_snr_seqs is None else min(cfg.low_snr_seqs, n_test)
        low_names = list(NUDT_LOW_SNR_NUMBERS[:n_low])
        used = set(low_names)
        extra = (i for i in range(121, 10**6) if i not in used)
        low_names += [next(extra) for _ in range(n_low - len(low_names))]
        used |= set(low_names)
        high_names = [i for i in NUDT_TEST_NUMBERS if i not in used][:n_test - n_low]
        used |= set(high_names)
        high_names += [i for i in range(121, 10**6) if i not in used][:n_test - n_low - len(high_names)]
        used |= set(high_names)
        free = (i for i in range(1, 10**6) if i not in used)
        n_train_low = n_train // 4
        layout = ([("train", next(free), i < n_train_low) for i in range(n_train)]
                  + [("val", next(free), False) for _ in range(n_val)]
                  + [("test", i, True) for i in low_names] + [("test", i, False) for i in high_names])
        for split, num, low in layout:
            s = rng.uniform(*cfg.low_snr_range) if low else rng.uniform(lo, hi)
            plans.append(SeqPlan(f"Sequence{num}", num, split, float(s), "low" if low else "high",
                                 int(rng.choice(counts, p=weights)), size))
        return plans
    num = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for _ in range(n):
            num += 1
            name = f"{split}/data{num}" if st.name == "daub" else str(num)
            s = float(rng.uniform(lo, hi))
            plans.append(SeqPlan(name, num, split, s, "low" if s <= 3 else "high",
                                 int(rng.choice(counts, p=weights)), size))
    return plans


def _seq_meta(plan: SeqPlan, r: Rendered) -> dict:
    return {"name": plan.name, "split": plan.split, "size": list(plan.size), "frames": int(len(r.frames)),
            "snr_label": plan.snr_label, "snr_requested": round(plan.snr, 3),
            "frames_with_target": int(r.present.any(0).sum()), "targets": r.targets}


def write_nudt(cfg: SynthConfig, plans: list[SeqPlan], n_frames: int) -> list[dict]:
    """NUDT-MIRSDT layout: Sequence<N>/{images,masks,masks_centroid}/<00001>.png and split files."""
    from utils.data.writers import write_nudt_sequence, write_nudt_splits

    st = cfg.style_obj()
    metas, split_lines = [], {"train": [], "val": [], "test": []}
    for plan in plans:
        r = render_sequence(cfg.seed, st, plan.number, plan.size, n_frames, plan.snr, plan.n_targets,
                            noise_variant=cfg.noise)
        masks = (r.masks, r.centroids) if cfg.write_masks else (None, None)
        split_lines[plan.split] += write_nudt_sequence(cfg.out, plan.name, r.frames, *masks)
        metas.append(_seq_meta(plan, r))
    write_nudt_splits(cfg.out, split_lines)
    return metas


def write_coco(cfg: SynthConfig, plans: list[SeqPlan], n_frames: int) -> list[dict]:
    """COCO video layout: images/<seq>/<i>.bmp, instances_<split>2017.json and the authors' txt lists."""
    from utils.data.writers import CocoSplit

    st = cfg.style_obj()
    metas = []
    splits = {s: CocoSplit(f"synthetic {st.name}-style moving small targets, seed {cfg.seed}")
              for s in ("train", "val", "test")}
    for plan in plans:
        r = render_sequence(cfg.seed, st, plan.number, plan.size, n_frames, plan.snr, plan.n_targets)
        boxes = [r.boxes[r.present[:, t], t] for t in range(n_frames)]
        splits[plan.split].add_sequence(cfg.out, plan.name, r.frames, boxes)
        metas.append(_seq_meta(plan, r))
    for split, coco in splits.items():
        if coco.images:
            coco.write(cfg.out, split, st.name)
    return metas


def generate(cfg: SynthConfig) -> dict:
    """Write the dataset described by `cfg` and `synth_meta.json`; returns the metadata dict."""
    if cfg.format not in ("nudt", "coco"):
        raise ConfigError(f"--format must be nudt or coco, got {cfg.format!r}")
    if cfg.format == "coco" and cfg.style not in ("itsdt", "irdst", "daub"):
        raise ConfigError(f"--style must be itsdt, irdst or daub, got {cfg.style!r}")
    if cfg.noise and cfg.format != "nudt":
        raise ConfigError("--noise is only defined for --format nudt")
    st = cfg.style_obj()
    n_frames = cfg.frames if cfg.frames is not None else st.frames
    size = cfg.size or st.size
    if n_frames < 1 or min(size) < 16:
        raise ConfigError(f"need --frames >= 1 and --size >= 16x16, got {n_frames} frames of {size}")
    if st.targets[0] < 0 or st.targets[1] < st.targets[0]:
        raise ConfigError(f"--targets: need 0 <= A <= B, got {st.targets}")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    plans = plan_sequences(cfg)
    writer = write_nudt if cfg.format == "nudt" else write_coco
    seqs = writer(cfg, plans, n_frames)
    cfg_dict = {k: v for k, v in asdict(cfg).items() if k not in ("out", "preview")}
    meta = {"format": cfg.format, "style": st.name, "variant": "noise" if cfg.noise else "clean",
            "config": cfg_dict, "snr_definition": "mean(peak - ring mean) / mean(ring std), ring 5..15 px",
            "low_snr_sequences": [s["name"] for s in seqs
                                  if s["snr_label"] == "low" and s["split"] == "test"],
            "sequences": seqs}
    (Path(cfg.out) / "synth_meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if cfg.preview:
        from utils.data.writers import write_preview

        write_preview(cfg.out, meta)
    return meta


# ---------------------------------------------------------------------------------------------------- CLI
def _pair(text: str, kind=float) -> tuple:
    parts = text.replace("x", ",").replace("-", ",").split(",")
    vals = tuple(kind(p) for p in parts if p != "")
    if len(vals) not in (1, 2):
        raise ValueError(f"expected N or AxB, got {text!r}")
    return vals if len(vals) == 2 else (vals[0], vals[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_synthetic.py", description="\n\n".join(__doc__.split("\n\n")[:2]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=["nudt", "coco"], default="nudt")
    p.add_argument("--style", choices=["itsdt", "irdst", "daub"], default="itsdt", help="COCO dataset style")
    p.add_argument("--out", required=True, help="output dataset root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-seqs", default=None,
                   help="TRAIN or TRAIN,VAL,TEST sequences (default nudt 8,1,4; coco 4,1,2)")
    p.add_argument("--frames", type=int, default=None, help="frames per sequence (default nudt 100, coco 40)")
    p.add_argument("--size", default=None, help="HxW or N (default nudt 128x160; daub 256; itsdt 240x320; "
                                                "irdst 256x320)")
    p.add_argument("--snr-range", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="target SNR range (nudt: the high-SNR sequences; default nudt 4 9, coco 4 10, "
                        "irdst 3 8)")
    p.add_argument("--low-snr-range", nargs=2, type=float, default=NUDT_LOW_SNR, metavar=("LO", "HI"),
                   help="nudt: SNR range of the low-SNR sequences, inside (0, 3]")
    p.add_argument("--low-snr-seqs", type=int, default=None,
                   help="nudt: how many test sequences are low-SNR (named 47, 56, 59, ...); default half")
    p.add_argument("--targets", default=None, help="targets per sequence: K or A-B")
    p.add_argument("--noise", action="store_true",
                   help="nudt: write the Noise variant (sigma 8 + non-uniformity)")
    p.add_argument("--no-masks", action="store_true",
                   help="nudt: write images and split files only (masks are read from the clean root)")
    p.add_argument("--preview", action="store_true", help="also write <out>/preview.png")
    return p


def config_from_args(argv: list[str] | None = None) -> SynthConfig:
    a = build_parser().parse_args(argv)
    num_seqs = None
    if a.num_seqs:
        try:
            parts = [int(v) for v in a.num_seqs.split(",")]
        except ValueError as err:
            raise ConfigError(f"--num-seqs: expected TRAIN or TRAIN,VAL,TEST, got {a.num_seqs!r}") from err
        if len(parts) not in (1, 3) or min(parts) < 0:
            raise ConfigError(f"--num-seqs: expected TRAIN or TRAIN,VAL,TEST, got {a.num_seqs!r}")
        base = STYLES["nudt" if a.format == "nudt" else a.style].seqs
        num_seqs = (parts[0], base[1], base[2]) if len(parts) == 1 else tuple(parts)
    try:
        size = _pair(a.size, int) if a.size else None
        targets = _pair(a.targets, int) if a.targets else None
    except ValueError as err:
        raise ConfigError(f"bad --size or --targets: {err}") from err
    low = tuple(a.low_snr_range)
    if not (0 < low[0] <= low[1] <= 3):
        raise ConfigError(f"--low-snr-range must lie in (0, 3], got {low}")
    return SynthConfig(format=a.format, style=a.style, out=a.out, seed=a.seed, num_seqs=num_seqs,
                       frames=a.frames, size=size, snr_range=tuple(a.snr_range) if a.snr_range else None,
                       low_snr_range=low, low_snr_seqs=a.low_snr_seqs, targets=targets, noise=a.noise,
                       write_masks=not a.no_masks, preview=a.preview)


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(argv)
    meta = generate(cfg)
    n_seq = len(meta["sequences"])
    n_frames = sum(s["frames"] for s in meta["sequences"])
    snrs = [t["snr"] for s in meta["sequences"] for t in s["targets"] if t["snr"] is not None]
    snr_text = f"realised SNR {min(snrs):.2f}..{max(snrs):.2f}" if snrs else "no measurable target"
    print(f"wrote {n_seq} sequences, {n_frames} frames ({meta['format']}/{meta['style']}, {meta['variant']}) "
          f"to {cfg.out}; {snr_text}")
    return meta


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
