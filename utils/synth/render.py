"""Render one synthetic sequence: frames, truth (masks, centroids, boxes) and the realised SNR.

Target amplitudes are set from a per-sequence SNR and the realised SNR of every target is measured on the
written 8-bit frames:

    SNR = mean_t(peak_t - ring_mean_t) / mean_t(ring_std_t)

with peak_t the frame value at the target's brightest pixel and the ring the pixels 5..15 px from it (wider
for large targets), other targets excluded, over the frames where the target is visible. Truth: masks are the
pixels where a target exceeds `mask_frac` of its amplitude (its brightest pixel always included), centroid
masks one pixel per target at the mask centroid, boxes the tight box of each target's mask (DAUB style: a
fixed 8x8 box centred on the target, like the real annotations).

The Noise variant adds i.i.d. Gaussian noise (sigma 8) and column non-uniformity (gain 0.15 on the local
contrast, offset 1.3 grey levels) to the same clean frames, so its masks equal the clean dataset's.
"""

from __future__ import annotations

import numpy as np

from utils.synth.scene import (
    Rendered,
    Style,
    correlated_noise,
    jitter_offsets,
    local_stats,
    make_background,
    make_track,
    quantise,
    render_spot,
    ring_offsets,
    rng_for,
    shift_frame,
    spot_radius,
    track_margin,
)


def render_sequence(seed: int, st: Style, number: int, size: tuple[int, int], n_frames: int, snr: float,
                    n_targets: int, noise_variant: bool = False) -> Rendered:
    """Render one sequence: frames, truth and realised SNR (see the module docstring).

    `number` keys the random streams (the sequence's name number). `noise_variant` returns the Noise
    variant's frames of the very same clean sequence (masks and boxes unchanged).
    """
    h, w = size
    rng = rng_for(seed, st.name, number, 0)
    pad = 3
    bg = make_background(rng, h + 2 * pad, w + 2 * pad)
    jit = jitter_offsets(rng, n_frames, st.jitter)
    clean = np.empty((n_frames, h, w), np.float32)
    for t in range(n_frames):
        clean[t] = shift_frame(bg, pad + jit[t, 0], pad + jit[t, 1], h, w)
        clean[t] += correlated_noise(rng, h, w, st.noise)

    spots, amps, params = [], [], []
    for _ in range(n_targets):
        if st.sigma_y is None:
            sx = rng.uniform(*st.sigma_x)
            sy = float(np.clip(sx * rng.uniform(0.8, 1.25), *st.sigma_x))
        else:
            sx, sy = rng.uniform(*st.sigma_x), rng.uniform(*st.sigma_y)
        radius = spot_radius(st, sx, sy)
        pos, amp, s0 = make_track(rng, st, n_frames, h, w, track_margin(st, radius))
        spots.append((render_spot(pos, sx, sy, radius, h, w), pos, radius))
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
        ring = ring_offsets(max(5.0, radius + 1.0), max(5.0, radius + 1.0) + 10.0)
        peak, mean, std, cnt = local_stats(frames, cy, cx, ring, support)
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
        out.reshape(-1)[touched] = quantise(target_values(gains))
        return out

    def realised(frames: np.ndarray) -> list[tuple[float, float, np.ndarray] | None]:
        """Per target: (mean peak - ring mean, mean ring std, frames used) or None if never measurable."""
        res = []
        for k in range(len(spots)):
            peak, mean, std, ok = measure(frames, k)
            res.append(((peak - mean)[ok].mean(), std[ok].mean(), ok) if ok.any() else None)
        return res

    base_q = quantise(clean)
    frames = compose(gains)
    # One correction step for quantisation and clipping: move each amplitude by the SNR shortfall.
    for k, r in enumerate(realised(frames)):
        if r is not None:
            sp, _, radius = spots[k]
            g = amps[k] * sp.unit[:, radius, radius]
            gains[k] = max(gains[k] + (snr * r[1] - r[0]) / max(float(g[r[2]].mean()), 1e-3), 1.0)
    frames = compose(gains)

    if noise_variant:
        nrng = rng_for(seed, st.name, number, 1)
        mu = np.float32(clean.mean())
        gain_col = (1 + 0.15 * nrng.standard_normal(w)).astype(np.float32)
        offset_col = (1.3 * nrng.standard_normal(w)).astype(np.float32)
        with_targets = clean.copy()
        with_targets.reshape(-1)[touched] = target_values(gains)
        noisy = mu + (with_targets - mu) * gain_col + offset_col
        noisy += nrng.standard_normal(noisy.shape, dtype=np.float32) * np.float32(8.0)
        frames = quantise(noisy)

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

