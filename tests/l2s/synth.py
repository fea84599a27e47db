"""Synthetic videos and faces for the L2S tests (written with PyAV, no detector needed)."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np

from metis_cli.media.video import PIXEL_MEAN, PIXEL_STD, REFERENCE_POINTS


def write_video(path: Path, frames: np.ndarray, fps, codec: str = "ffv1") -> Path:
    """Encode RGB frames; ffv1/bgr0 in .mkv is lossless, mpeg4 in .mp4 is a realistic lossy case."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def gray_levels(levels) -> np.ndarray:
    """One uniform 96x96 gray frame per level, (T, 96, 96, 3) uint8."""
    return np.stack([np.full((96, 96, 3), v, np.uint8) for v in levels])


def unnormalise(rois: np.ndarray) -> np.ndarray:
    return (rois * PIXEL_STD + PIXEL_MEAN) * 255


def _similar(points: np.ndarray, scale: float, angle_deg: float, shift) -> np.ndarray:
    a = math.radians(angle_deg)
    R = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ R.T + np.asarray(shift, dtype=np.float64)


def face_video(n: int, scale: float, angle: float, shifts) -> tuple[np.ndarray, np.ndarray]:
    """Black 320x320 frames with a bright disk on the mouth of a similarity-moved mean face."""
    frames = np.zeros((n, 320, 320, 3), np.uint8)
    marks = np.zeros((n, 4, 2))
    yy, xx = np.mgrid[0:320, 0:320]
    for t in range(n):
        marks[t] = _similar(REFERENCE_POINTS, scale, angle, shifts[t])
        mx, my = marks[t, 3]
        frames[t][(xx - mx) ** 2 + (yy - my) ** 2 <= (8 * scale) ** 2] = 255
    return frames, marks


def bright_centroid(img: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(img > 127)
    return float(xs.mean()), float(ys.mean())
