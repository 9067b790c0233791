"""Box geometry: letterbox parameters, decoding, NMS, letterbox undo, boxes <-> masks."""

from __future__ import annotations


def letterbox_params(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[float, int, int, int, int]:
    """Letterbox of an image of size `src_hw` = (ih, iw) into `dst_hw` = (H, W), as the authors do it.

    Returns (scale, nw, nh, dx, dy): the image is resized to (nh, nw) with scale = min(W/iw, H/ih),
    nw = int(iw * scale), nh = int(ih * scale), and pasted at offset dx = (W - nw) // 2, dy = (H - nh) // 2.
    """
    ih, iw = src_hw
    H, W = dst_hw
    scale = min(W / iw, H / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    return scale, nw, nh, (W - nw) // 2, (H - nh) // 2
