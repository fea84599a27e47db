"""Video front end of lip-to-speech: frames, face keypoints, mouth crops (L2S spec §7).

Pipeline for one video (`load_mouth_rois` does all of it):

1. `read_video`: every frame as RGB uint8 with PyAV (what upstream's torchvision reader does).
2. Keypoints per frame, (T, 4, 2) float (x, y) in pixels, order RIGHT_EYE, LEFT_EYE, NOSE_TIP,
   MOUTH_CENTER (the subject's right eye is on the image's left); NaN rows = no face. From
   MediaPipe BlazeFace (`detect_landmarks`, optional extra `metis-cli[face]`) or from a
   landmark file (`load_landmarks`: a `.npy` array of that shape, one row per decoded frame).
3. Gap filling (linear), temporal smoothing, similarity alignment of the 4 points to the mean
   face in a 256x256 frame, 96x96 crop around the mouth, grayscale (`crop_mouths`).
4. Frame-rate policy (our deviation from upstream, which assumes 25 fps): for a stream that is
   not 25 fps the crops are resampled to 25 fps with upstream's own speed rule, i.e. keep frame
   indices `linspace(0, T-1, floor(T * 25 / fps))` truncated to integers (nearest earlier
   frame; frames are dropped above 25 fps and repeated below). The features then last as long
   as the video, so the generated speech does too.
5. `to_model_input`: centre crop 88x88, /255, (x - 0.421) / 0.165 -> (T25, 88, 88) float32.

Pre-cropped mouth videos (frames of 96x96 or 88x88 pixels) skip steps 2-3.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .constants import VIDEO_FPS
from .errors import VideoError

log = logging.getLogger(__name__)

MIN_VIDEO_FRAMES = (
    5  # shortest clip accepted (0.2 s at 25 fps, 10 semantic tokens), before and after resampling
)

# Mean face (auto_avsr `20words_mean_face.npy`, iBUG-68 layout in a 256x256 frame) reduced to
# the 4 MediaPipe keypoints: means of points 36-41, 42-47, 31-35 and 48-67 (spec §7.8).
REFERENCE_POINTS = np.array(
    [
        [102.0739430571, 94.2723035239],  # right eye
        [156.3613054162, 93.5781560519],  # left eye
        [129.0037378702, 135.9034302860],  # nose tip
        [129.3133732259, 157.8229963492],  # mouth centre
    ],
    dtype=np.float64,
)
MOUTH = 3  # index of the crop centre in the keypoint order
ALIGNED_SIZE = 256  # aligned face frame (pixels)
SMOOTH_HALF_WINDOW = 6  # temporal smoothing: up to 6 frames either side
CROP_HALF = 48  # 96x96 mouth crop
CROP_GUARD = CROP_HALF + 5  # max distance of the aligned mouth from the frame centre
MODEL_SIZE = 88  # centre crop fed to the encoder
PIXEL_MEAN, PIXEL_STD = 0.421, 0.165

NO_DETECTOR_HELP = (
    "install metis-cli[face] (mediapipe==0.10.21, Python <= 3.12, numpy<2), "
    "or pass --landmarks FILE (.npy, (frames, 4, 2)), or give a pre-cropped 96x96 mouth video"
)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise VideoError("video support needs OpenCV: install metis-cli[video]") from None
    return cv2


# ------------------------------------------------------------------------------------------
# decoding (spec §7.1)
# ------------------------------------------------------------------------------------------


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode the first video stream of `path`: frames (T, H, W, 3) uint8 RGB, and its fps.

    Audio is ignored. Raises VideoError for an unreadable file, a file without a video stream,
    fewer than MIN_VIDEO_FRAMES frames, or frames whose size changes mid-stream.
    """
    try:
        import av
    except ImportError:
        raise VideoError("video support needs PyAV: install metis-cli[video]") from None
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    frames, times = [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream (audio-only or not a video)")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(frame.time)
            rate = stream.average_rate or stream.guessed_rate
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video ({exc.strerror or type(exc).__name__})") from None
    if len(frames) < MIN_VIDEO_FRAMES:
        raise VideoError(f"{path}: {len(frames)} video frame(s); at least {MIN_VIDEO_FRAMES} are needed")
    if len({f.shape for f in frames}) > 1:
        raise VideoError(f"{path}: the frame size changes within the video")
    fps = float(rate) if rate else _fps_from_times(times)
    if not fps or not math.isfinite(fps) or fps <= 0:
        raise VideoError(f"{path}: cannot determine the frame rate")
    _warn_if_variable_rate(path, times)
    return np.stack(frames), fps


def _fps_from_times(times: list[float | None]) -> float:
    t = [x for x in times if x is not None]
    if len(t) < 2 or t[-1] <= t[0]:
        return 0.0
    return (len(t) - 1) / (t[-1] - t[0])


def _warn_if_variable_rate(path: Path, times: list[float | None]) -> None:
    t = np.array([x for x in times if x is not None], dtype=np.float64)
    if len(t) < 3:
        return
    dt = np.diff(t)
    med = float(np.median(dt))
    if med > 0 and float(np.max(np.abs(dt - med))) > 0.5 * med:
        log.warning("%s: variable frame rate; frames are treated as evenly spaced", path)


# ------------------------------------------------------------------------------------------
# keypoints (spec §7.2, §7.3)
# ------------------------------------------------------------------------------------------


def detect_landmarks(frames: np.ndarray, source: str = "video") -> np.ndarray:
    """MediaPipe BlazeFace keypoints, (T, 4, 2) float64, NaN rows where no face was found.

    The full-range model runs on every frame; the short-range one only if the full-range pass
    found no face anywhere. Keypoints are truncated to integer pixels like upstream. With
    several faces, upstream's selection is mirrored: the last detection, or the first one if
    the last box has a non-positive (w - x) + (h - y).
    """
    try:
        import mediapipe as mp

        face_detection = mp.solutions.face_detection
    except (ImportError, AttributeError):
        raise VideoError(f"{source}: no face detector available; {NO_DETECTOR_HELP}") from None
    for model_selection in (1, 0):  # full range, then short range
        with face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=0.5
        ) as det:
            marks = np.stack([_keypoints(det.process(np.ascontiguousarray(f)), f.shape) for f in frames])
        if not np.isnan(marks).all():
            return marks
    raise VideoError(f"{source}: no face found in any frame")


def _keypoints(result, shape: tuple[int, ...]) -> np.ndarray:
    """One frame's detector result -> (4, 2) keypoints in pixels (NaN when no face)."""
    ih, iw = shape[:2]
    detections = list(result.detections or [])
    if not detections:
        return np.full((4, 2), np.nan)
    last = detections[-1]
    box = last.location_data.relative_bounding_box
    x, y = int(box.xmin * iw), int(box.ymin * ih)
    w, h = int(box.width * iw), int(box.height * ih)
    chosen = last if (w - x) + (h - y) > 0 else detections[0]
    points = chosen.location_data.relative_keypoints[:4]
    return np.array([[int(p.x * iw), int(p.y * ih)] for p in points], dtype=np.float64)


def load_landmarks(path: str | Path, num_frames: int) -> np.ndarray:
    """Read a landmark file: `.npy` float array (num_frames, 4, 2) of (x, y) pixel keypoints in
    the order RIGHT_EYE, LEFT_EYE, NOSE_TIP, MOUTH_CENTER; NaN rows for frames without a face.
    """
    path = Path(path)
    try:
        marks = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise VideoError(f"{path}: landmark file not found") from None
    except (OSError, ValueError) as exc:
        raise VideoError(f"{path}: not a .npy landmark array ({exc})") from None
    return _check_landmarks(marks, num_frames, str(path))


def _check_landmarks(marks: np.ndarray, num_frames: int, source: str) -> np.ndarray:
    marks = np.asarray(marks)
    if marks.dtype.kind not in "fiu" or marks.shape != (num_frames, 4, 2):
        raise VideoError(
            f"{source}: landmarks must be a numeric (frames, 4, 2) array with {num_frames} frames, "
            f"got {marks.dtype} {marks.shape}"
        )
    return marks.astype(np.float64)


def fill_landmark_gaps(marks: np.ndarray, source: str = "video") -> np.ndarray:
    """Linear interpolation over frames without a face (NaN rows); ends copy the nearest face.

    marks: (T, 4, 2) -> (T, 4, 2) float64 without NaN. Raises VideoError if no frame has one.
    """
    marks = np.array(marks, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(marks).any(axis=(1, 2)))
    if len(valid) == 0:
        raise VideoError(f"{source}: no face found in any frame")
    for a, b in zip(valid[:-1], valid[1:], strict=True):
        for k in range(1, b - a):
            marks[a + k] = marks[a] + k / (b - a) * (marks[b] - marks[a])
    marks[: valid[0]] = marks[valid[0]]
    marks[valid[-1] + 1 :] = marks[valid[-1]]
    return marks


def smooth_landmarks(marks: np.ndarray, t: int) -> np.ndarray:
    """Frame t's keypoints averaged over a symmetric window of up to 6 frames either side
    (shrinking at the ends), re-centred on frame t's own centroid. (T, 4, 2) -> (4, 2)."""
    w = min(SMOOTH_HALF_WINDOW, t, len(marks) - 1 - t)
    s = marks[t - w : t + w + 1].mean(axis=0)
    return s + (marks[t].mean(axis=0) - s.mean(axis=0))


# ------------------------------------------------------------------------------------------
# alignment and crop (spec §7.4, §7.5)
# ------------------------------------------------------------------------------------------


def similarity_transform(points: np.ndarray) -> np.ndarray:
    """(4, 2) keypoints -> 2x3 similarity matrix onto REFERENCE_POINTS (OpenCV LMEDS)."""
    cv2 = _cv2()
    A, _ = cv2.estimateAffinePartial2D(np.asarray(points, np.float64), REFERENCE_POINTS, method=cv2.LMEDS)
    if A is None:
        raise ValueError("degenerate keypoints")
    return A


def crop_box(center: tuple[float, float]) -> tuple[int, int, int, int]:
    """Aligned mouth centre (cx, cy) -> (y0, y1, x0, x1) of the 96x96 box (round half to even)."""
    cx, cy = center

    def edge(v: float) -> int:
        return int(round(float(np.clip(v, 0, ALIGNED_SIZE))))

    return edge(cy - CROP_HALF), edge(cy + CROP_HALF), edge(cx - CROP_HALF), edge(cx + CROP_HALF)


def crop_mouths(
    frames: np.ndarray, marks: np.ndarray, indices: np.ndarray | None = None, source: str = "video"
) -> np.ndarray:
    """Aligned grayscale mouth crops (len(indices), 96, 96) uint8.

    frames: (T, H, W, 3) RGB uint8; marks: (T, 4, 2) keypoints (NaN rows allowed, filled);
    indices: the frames to crop (default all). Smoothing always sees all T frames.
    """
    cv2 = _cv2()
    marks = fill_landmark_gaps(marks, source)
    indices = np.arange(len(frames)) if indices is None else indices
    crops = []
    for t in indices:
        points = smooth_landmarks(marks, int(t))
        gray = cv2.cvtColor(np.ascontiguousarray(frames[t]), cv2.COLOR_RGB2GRAY)  # before warping
        try:
            A = similarity_transform(points)
        except ValueError:
            raise VideoError(f"{source}: frame {t}: keypoints too degenerate to align") from None
        aligned = cv2.warpAffine(
            gray,
            A,
            (ALIGNED_SIZE, ALIGNED_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        cx, cy = A[:, :2] @ points[MOUTH] + A[:, 2]
        if abs(cy - ALIGNED_SIZE / 2) > CROP_GUARD or abs(cx - ALIGNED_SIZE / 2) > CROP_GUARD:
            raise VideoError(f"{source}: frame {t}: the mouth is too far from the aligned face position")
        y0, y1, x0, x1 = crop_box((cx, cy))
        patch = aligned[y0:y1, x0:x1]
        if patch.shape != (2 * CROP_HALF, 2 * CROP_HALF):
            raise VideoError(f"{source}: frame {t}: the mouth crop leaves the aligned face frame")
        crops.append(patch)
    return np.stack(crops)


# ------------------------------------------------------------------------------------------
# frame rate, model input (spec §7.6, §7.9)
# ------------------------------------------------------------------------------------------


def resample_indices(num_frames: int, fps: float) -> np.ndarray:
    """Frame indices that turn `num_frames` frames at `fps` into a 25 fps sequence (int64).

    Identity at 25 fps; otherwise `linspace(0, T-1, floor(T * 25 / fps))` truncated.
    """
    if abs(fps - VIDEO_FPS) < 1e-3:
        return np.arange(num_frames, dtype=np.int64)
    n_out = math.floor(num_frames * VIDEO_FPS / fps + 1e-9)
    return np.linspace(0, num_frames - 1, n_out).astype(np.int64)


def to_model_input(crops: np.ndarray) -> np.ndarray:
    """Gray crops (T, 96, 96) or (T, 88, 88) uint8 -> normalised (T, 88, 88) float32."""
    x = crops.astype(np.float32) / 255.0
    off = (x.shape[1] - MODEL_SIZE) // 2  # 4 for 96x96 crops
    x = x[:, off : off + MODEL_SIZE, off : off + MODEL_SIZE]
    return np.ascontiguousarray((x - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD))


def _is_precropped_size(frames: np.ndarray) -> bool:
    return frames.shape[1:3] in ((2 * CROP_HALF, 2 * CROP_HALF), (MODEL_SIZE, MODEL_SIZE))


def mouth_rois(
    frames: np.ndarray,
    fps: float,
    landmarks: np.ndarray | str | Path | None = None,
    detector: str = "mediapipe",
    precropped: bool | None = None,
    source: str = "video",
) -> np.ndarray:
    """Frames (T, H, W, 3) RGB uint8 at `fps` -> encoder input (T25, 88, 88) float32 at 25 fps.

    landmarks: (T, 4, 2) array or a `.npy` path (see `load_landmarks`); None runs `detector`.
    precropped: frames are already mouth crops (96x96 or 88x88); None = decide by frame size.
    source: the input's name in error messages.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(
            f"{source}: expected RGB uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    if precropped is None:
        precropped = landmarks is None and _is_precropped_size(frames)
    indices = resample_indices(len(frames), fps)
    if len(indices) < MIN_VIDEO_FRAMES:
        raise VideoError(
            f"{source}: {len(frames)} frame(s) at {fps:g} fps make {len(indices)} at {VIDEO_FPS} fps; "
            f"at least {MIN_VIDEO_FRAMES} are needed"
        )
    if len(indices) != len(frames):
        log.info(
            "%s: resampling %d frames at %g fps to %d at %d fps",
            source,
            len(frames),
            fps,
            len(indices),
            VIDEO_FPS,
        )
    cv2 = _cv2()
    if precropped:
        if not _is_precropped_size(frames):
            raise VideoError(
                f"{source}: a pre-cropped mouth video must be 96x96 or 88x88 pixels, "
                f"got {frames.shape[2]}x{frames.shape[1]}"
            )
        crops = np.stack([cv2.cvtColor(np.ascontiguousarray(frames[t]), cv2.COLOR_RGB2GRAY) for t in indices])
        return to_model_input(crops)
    if landmarks is None:
        if detector != "mediapipe":
            raise VideoError(f"{source}: unknown face detector {detector!r} (only 'mediapipe')")
        marks = detect_landmarks(frames, source)
    elif isinstance(landmarks, (str, Path)):
        marks = load_landmarks(landmarks, len(frames))
    else:
        marks = _check_landmarks(landmarks, len(frames), source)
    return to_model_input(crop_mouths(frames, marks, indices, source))


def load_mouth_rois(
    path: str | Path,
    landmarks: np.ndarray | str | Path | None = None,
    precropped: bool | None = None,
    detector: str = "mediapipe",
) -> np.ndarray:
    """`read_video(path)` then `mouth_rois(...)`: encoder input (T25, 88, 88) float32."""
    frames, fps = read_video(path)
    return mouth_rois(
        frames, fps, landmarks=landmarks, detector=detector, precropped=precropped, source=str(path)
    )


def visual_features(encoder: nn.Module, rois: np.ndarray | Tensor) -> Tensor:
    """Mouth ROIs (T, 88, 88) -> encoder features (T, D) on the encoder's device and dtype."""
    p = next(encoder.parameters())
    x = torch.as_tensor(rois).to(device=p.device, dtype=p.dtype)[None, None]  # (1, 1, T, 88, 88)
    with torch.no_grad():
        return encoder(x)[0]
