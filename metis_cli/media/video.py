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
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from metis_cli.assets.cache import cache_root, check_sha256, download, pypi_file_url, sha256_of
from metis_cli.constants import VIDEO_FPS
from metis_cli.errors import MissingModelError, VideoError

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
    "install metis-cli[face] (MediaPipe Tasks, then `metis download face-detector` or --face-model FILE) "
    "or metis-cli[face-legacy] (mediapipe==0.10.21, numpy<2), or pass --landmarks FILE (.npy, "
    "(frames, 4, 2)), or give a pre-cropped 96x96 mouth video"
)
FACE_MODEL_ENV = "METIS_FACE_MODEL"  # a face-detector model file for the Tasks API (--face-model)
# The BlazeFace models as bundled in the legacy wheel: name -> (member, size, sha256).
FACE_DETECTOR_WHEEL = (
    "mediapipe",
    "0.10.21",
    "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
)
FACE_DETECTOR_FILES = {
    "face_detection_full_range_sparse.tflite": (
        "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
        676_746,
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    ),
    "face_detection_short_range.tflite": (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        229_714,
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
}


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


def detect_landmarks(
    frames: np.ndarray, source: str = "video", face_model: str | Path | None = None
) -> np.ndarray:
    """MediaPipe BlazeFace keypoints, (T, 4, 2) float64, NaN rows where no face was found.

    Two MediaPipe APIs, the same BlazeFace networks:

    * the legacy ``mp.solutions.face_detection`` (mediapipe 0.10.21, extra ``face-legacy``; its
      wheel bundles the models), used when it exists and no model file is given;
    * the Tasks API ``FaceDetector`` of current releases (extra ``face``; no bundled models), with
      ``face_model`` (``--face-model``), else ``$METIS_FACE_MODEL``, else the two files that
      ``metis download face-detector`` caches (see `fetch_face_detector`).

    As upstream, the full-range model runs on every frame and the short-range one only if the
    full-range pass found no face anywhere (a single given model file runs alone). The Tasks
    graph of mediapipe 0.10.x cannot run the full-range model (its anchors are the short-range
    ones); there the short-range model runs alone, with a warning (1.x runs both). Keypoints
    are truncated to integer pixels like upstream. With several faces, upstream's selection is
    mirrored: the last detection, or the first one if the last box has a non-positive
    (w - x) + (h - y).
    """
    try:
        import mediapipe as mp
    except ImportError:
        raise VideoError(f"{source}: no face detector available; {NO_DETECTOR_HELP}") from None
    model = face_model or os.environ.get(FACE_MODEL_ENV) or None
    legacy = getattr(getattr(mp, "solutions", None), "face_detection", None)
    if model is None and legacy is not None:
        passes = [lambda f, sel=sel: _detect_legacy(legacy, f, sel) for sel in (1, 0)]
    else:
        paths = [Path(model)] if model is not None else face_detector_files()
        for path in paths:
            if not path.is_file():
                raise VideoError(f"{source}: face-detector model {path} not found")
        passes = [lambda f, path=path: _detect_tasks(mp, f, path, source) for path in paths]
    for k, detect in enumerate(passes):  # full range, then short range
        try:
            marks = detect(frames)
        except VideoError as exc:
            if model is not None or k + 1 == len(passes):
                raise
            # mediapipe 0.10.x's Tasks graph knows only the short-range anchors
            log.warning("%s; using the short-range model alone", exc)
            continue
        if not np.isnan(marks).all():
            return marks
    raise VideoError(f"{source}: no face found in any frame")


def _detect_legacy(face_detection, frames: np.ndarray, model_selection: int) -> np.ndarray:
    with face_detection.FaceDetection(model_selection=model_selection, min_detection_confidence=0.5) as det:
        return np.stack([_keypoints(det.process(np.ascontiguousarray(f)), f.shape) for f in frames])


def _detect_tasks(mp, frames: np.ndarray, model: Path, source: str) -> np.ndarray:
    try:
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError:
        raise VideoError(f"{source}: this mediapipe has no Tasks API; {NO_DETECTOR_HELP}") from None
    options = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(model)), min_detection_confidence=0.5
    )
    try:
        detector = vision.FaceDetector.create_from_options(options)
    except (RuntimeError, ValueError) as exc:
        raise VideoError(f"{source}: cannot load face-detector model {model}: {_first_line(exc)}") from None
    rows = []
    try:
        with detector:
            for f in frames:
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(f))
                rows.append(_tasks_keypoints(detector.detect(image).detections, f.shape))
    except RuntimeError as exc:  # e.g. a model whose anchors this mediapipe's graph does not know
        raise VideoError(
            f"{source}: mediapipe {getattr(mp, '__version__', '?')} cannot run face-detector model "
            f"{model.name}: {_first_line(exc)}"
        ) from None
    return np.stack(rows)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def _select(boxes: list[tuple[int, int, int, int]]) -> int:
    """Upstream's choice among several faces: the last, unless its (w - x) + (h - y) <= 0."""
    x, y, w, h = boxes[-1]
    return len(boxes) - 1 if (w - x) + (h - y) > 0 else 0


def _keypoints(result, shape: tuple[int, ...]) -> np.ndarray:
    """One frame's legacy detector result -> (4, 2) keypoints in pixels (NaN when no face)."""
    ih, iw = shape[:2]
    detections = list(result.detections or [])
    if not detections:
        return np.full((4, 2), np.nan)
    boxes = []
    for d in detections:
        box = d.location_data.relative_bounding_box
        boxes.append((int(box.xmin * iw), int(box.ymin * ih), int(box.width * iw), int(box.height * ih)))
    points = detections[_select(boxes)].location_data.relative_keypoints[:4]
    return np.array([[int(p.x * iw), int(p.y * ih)] for p in points], dtype=np.float64)


def _tasks_keypoints(detections, shape: tuple[int, ...]) -> np.ndarray:
    """One frame's Tasks detections -> (4, 2) keypoints in pixels (NaN when no face).

    Tasks boxes are already in pixels (ints); keypoints are relative, as in the legacy API.
    """
    ih, iw = shape[:2]
    detections = list(detections or [])
    if not detections:
        return np.full((4, 2), np.nan)
    boxes = [(d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width, d.bounding_box.height)
             for d in detections]  # fmt: skip
    points = detections[_select(boxes)].keypoints[:4]
    return np.array([[int(p.x * iw), int(p.y * ih)] for p in points], dtype=np.float64)


# ------------------------------------------------------------------------------------------
# the face-detector model files for the Tasks API (`metis download face-detector`)
# ------------------------------------------------------------------------------------------


def face_detector_dir() -> Path:
    """``$METIS_CACHE_DIR/face-detector`` (default ``~/.cache/metis/face-detector``)."""
    return cache_root() / "face-detector"


def face_detector_files(folder: Path | None = None, check: bool = True) -> list[Path]:
    """The cached BlazeFace models (full range, then short range), each checked by sha256.

    Raises MissingModelError (one line) when one is missing or differs from the recorded file.
    """
    folder = folder or face_detector_dir()
    paths = []
    for name, (_member, size, sha256) in FACE_DETECTOR_FILES.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size or (check and sha256_of(path) != sha256):
            raise MissingModelError(
                f"face-detector model {path} is missing or not the recorded file: "
                "run `metis download face-detector`, or pass --face-model FILE"
            )
        paths.append(path)
    return paths


def fetch_face_detector(dest: Path | None = None, offline: bool | None = None) -> Path:
    """Ensure the two BlazeFace models are cached in ``dest``; return that folder.

    They are the files the legacy ``mediapipe==0.10.21`` wheel bundles (the Tasks API of current
    releases runs them unchanged): the wheel is fetched from PyPI, checked against its recorded
    sha256, and only the two models are kept, each checked against its recorded sha256.
    ``offline`` (default: ``--offline`` / ``HF_HUB_OFFLINE``) forbids the download.
    """
    import shutil
    import tempfile
    import zipfile

    folder = dest or face_detector_dir()
    try:
        face_detector_files(folder)
        return folder
    except MissingModelError:
        pass
    if offline is None:
        from metis_cli.assets.cards import env_offline

        offline = env_offline()
    if offline:
        raise MissingModelError(
            f"face-detector models are not in {folder} and downloads are off (--offline / HF_HUB_OFFLINE)"
        )
    name, version, filename, wheel_sha256 = FACE_DETECTOR_WHEEL
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            wheel = Path(tmp) / filename
            download(pypi_file_url(name, version, filename), wheel)
            check_sha256(wheel, wheel_sha256, what=filename)
            with zipfile.ZipFile(wheel) as zf:
                for out_name, (member, _size, sha256) in FACE_DETECTOR_FILES.items():
                    part = Path(tmp) / out_name
                    with zf.open(member) as src, part.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                    check_sha256(part, sha256, what=f"{member} in {filename}")
                    os.replace(part, folder / out_name)
    except OSError as exc:  # URLError is an OSError
        raise MissingModelError(f"cannot fetch the face-detector models from PyPI: {exc}") from exc
    face_detector_files(folder)
    return folder


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


def _crop_geometry(points: np.ndarray, t: int, source: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Smoothed keypoints of one frame -> (2x3 alignment matrix, (y0, y1, x0, x1) crop box)."""
    try:
        A = similarity_transform(points)
    except ValueError:
        raise VideoError(f"{source}: frame {t}: keypoints too degenerate to align") from None
    cx, cy = A[:, :2] @ points[MOUTH] + A[:, 2]
    if abs(cy - ALIGNED_SIZE / 2) > CROP_GUARD or abs(cx - ALIGNED_SIZE / 2) > CROP_GUARD:
        raise VideoError(f"{source}: frame {t}: the mouth is too far from the aligned face position")
    return A, crop_box((cx, cy))


def mouth_crop_centres(
    marks: np.ndarray, indices: np.ndarray | None = None, source: str = "video"
) -> np.ndarray:
    """Where each mouth crop's centre lies in its original frame, (len(indices), 2) (x, y) pixels.

    The centre of the 96x96 box in the aligned frame, mapped back through the inverse of that
    frame's alignment: what `crop_mouths` cuts out is centred there.
    """
    marks = fill_landmark_gaps(marks, source)
    indices = np.arange(len(marks)) if indices is None else indices
    centres = []
    for t in indices:
        A, (y0, y1, x0, x1) = _crop_geometry(smooth_landmarks(marks, int(t)), int(t), source)
        M = A[:, :2]
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) - 0.5  # pixel centres, not edges
        centres.append(np.linalg.solve(M, centre - A[:, 2]))
    return np.stack(centres)


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
        A, (y0, y1, x0, x1) = _crop_geometry(points, int(t), source)
        aligned = cv2.warpAffine(
            gray,
            A,
            (ALIGNED_SIZE, ALIGNED_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
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
    face_model: str | Path | None = None,
) -> np.ndarray:
    """Frames (T, H, W, 3) RGB uint8 at `fps` -> encoder input (T25, 88, 88) float32 at 25 fps.

    landmarks: (T, 4, 2) array or a `.npy` path (see `load_landmarks`); None runs `detector`.
    precropped: frames are already mouth crops (96x96 or 88x88); None = decide by frame size.
    source: the input's name in error messages. face_model: see `detect_landmarks`.
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
        marks = detect_landmarks(frames, source, face_model)
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
    face_model: str | Path | None = None,
) -> np.ndarray:
    """`read_video(path)` then `mouth_rois(...)`: encoder input (T25, 88, 88) float32."""
    frames, fps = read_video(path)
    return mouth_rois(
        frames,
        fps,
        landmarks=landmarks,
        detector=detector,
        precropped=precropped,
        source=str(path),
        face_model=face_model,
    )


def visual_features(encoder: nn.Module, rois: np.ndarray | Tensor) -> Tensor:
    """Mouth ROIs (T, 88, 88) -> encoder features (T, D) on the encoder's device and dtype."""
    p = next(encoder.parameters())
    x = torch.as_tensor(rois).to(device=p.device, dtype=p.dtype)[None, None]  # (1, 1, T, 88, 88)
    with torch.no_grad():
        return encoder(x)[0]
