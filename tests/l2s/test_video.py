"""Video reading, frame-rate policy, mouth crops and their error cases (L2S spec §7)."""

from __future__ import annotations

import math
import sys
import types
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from metis_cli.errors import VideoError
from metis_cli.media.video import (
    REFERENCE_POINTS,
    crop_box,
    detect_landmarks,
    fill_landmark_gaps,
    load_mouth_rois,
    mouth_rois,
    read_video,
    resample_indices,
    similarity_transform,
    smooth_landmarks,
    visual_features,
)
from metis_cli.nn.visual import VisualEncoder, tiny_config
from tests.l2s.synth import bright_centroid, face_video, gray_levels, unnormalise, write_video

# --- reading ------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [25, 30])
def test_read_video_round_trip(tmp_path: Path, fps: int) -> None:
    rng = np.random.default_rng(fps)
    frames = rng.integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mkv", frames, fps)
    got, got_fps = read_video(path)
    assert got.shape == (12, 48, 64, 3) and got.dtype == np.uint8
    assert got_fps == fps
    np.testing.assert_array_equal(got, frames)  # RGB order kept, lossless codec


def test_read_lossy_ntsc_video(tmp_path: Path) -> None:
    frames = np.zeros((12, 64, 64, 3), np.uint8)
    frames[:, :, :32] = (200, 30, 30)  # red left half: channel order must survive
    path = write_video(tmp_path / "clip.mp4", frames, Fraction(30000, 1001), codec="mpeg4")
    got, fps = read_video(path)
    assert got.shape == (12, 64, 64, 3)
    assert fps == pytest.approx(29.97, abs=1e-3)
    assert got[:, 20, 10, 0].min() > 150 and got[:, 20, 10, 2].max() < 80


def test_read_video_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match=r"notes\.mp4: not a readable video"):
        read_video(text)

    audio = tmp_path / "speech.wav"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoError, match=r"speech\.wav: no video stream"):
        read_video(audio)

    short = write_video(tmp_path / "short.mkv", gray_levels([10, 20, 30]), 25)
    with pytest.raises(VideoError, match=r"short\.mkv: 3 video frame\(s\); at least 5"):
        read_video(short)

    with pytest.raises(VideoError, match="not found"):
        read_video(tmp_path / "missing.mp4")


# --- frame rate ---------------------------------------------------------------------------


def test_resample_indices() -> None:
    np.testing.assert_array_equal(resample_indices(12, 25.0), np.arange(12))
    np.testing.assert_array_equal(resample_indices(12, 30.0), [0, 1, 2, 3, 4, 6, 7, 8, 9, 11])
    assert len(resample_indices(300, 30000 / 1001)) == 250  # 10.01 s -> 10 s worth of frames
    up = resample_indices(10, 15.0)  # below 25 fps frames repeat
    assert len(up) == 16 and up[0] == 0 and up[-1] == 9 and np.all(np.diff(up) >= 0)
    for n, fps in [(37, 24.0), (120, 60.0), (50, 50.0)]:
        assert abs(len(resample_indices(n, fps)) / 25 - n / fps) < 1 / 25  # duration kept


def test_precropped_30fps_video_is_resampled(tmp_path: Path) -> None:
    levels = [20 * i for i in range(12)]
    path = write_video(tmp_path / "mouth30.mkv", gray_levels(levels), 30)
    rois = load_mouth_rois(path)  # 96x96 -> detected as pre-cropped, no face detector needed
    assert rois.shape == (10, 88, 88) and rois.dtype == np.float32
    kept = np.round(unnormalise(rois).mean(axis=(1, 2)) / 20).astype(int)
    np.testing.assert_array_equal(kept, [0, 1, 2, 3, 4, 6, 7, 8, 9, 11])

    path25 = write_video(tmp_path / "mouth25.mkv", gray_levels(levels), 25)
    kept25 = np.round(unnormalise(load_mouth_rois(path25)).mean(axis=(1, 2)) / 20).astype(int)
    np.testing.assert_array_equal(kept25, np.arange(12))


def test_precropped_transform_is_exact() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 96, 96), dtype=np.uint8)
    frames = np.repeat(gray[..., None], 3, axis=-1)
    rois = mouth_rois(frames, 25.0)
    expected = (gray[:, 4:92, 4:92].astype(np.float32) / 255 - np.float32(0.421)) / np.float32(0.165)
    np.testing.assert_allclose(rois, expected, rtol=0, atol=1e-6)
    # 88x88 crops are used as they are; colour goes through OpenCV's RGB->gray weights
    frames88 = np.zeros((5, 88, 88, 3), np.uint8)
    frames88[...] = (200, 100, 50)
    np.testing.assert_allclose(unnormalise(mouth_rois(frames88, 25.0)), 124, atol=1e-3)
    with pytest.raises(VideoError, match="96x96 or 88x88"):
        mouth_rois(np.zeros((5, 64, 64, 3), np.uint8), 25.0, precropped=True)
    with pytest.raises(VideoError, match="at least 5"):
        mouth_rois(frames88[:4], 25.0)


# --- keypoints, alignment, crop -----------------------------------------------------------


def test_spec_geometry_vector() -> None:
    points = np.array([(203, 105), (247, 108), (223, 132), (222, 149)], dtype=np.float64)
    A = similarity_transform(points)
    expected = [[1.3946624184, 0.1055511292, -195.9031904], [-0.1055511292, 1.3946624184, -28.2295219]]
    np.testing.assert_allclose(A, expected, atol=1e-6)
    mouth = A[:, :2] @ points[3] + A[:, 2]
    np.testing.assert_allclose(mouth, [129.4389847, 156.1428277], atol=1e-6)
    assert crop_box(tuple(mouth)) == (108, 204, 81, 177)


def test_gap_filling_and_smoothing() -> None:
    P, Q, R = np.full((4, 2), 10.0), np.full((4, 2), 40.0), np.full((4, 2), 0.0)
    marks = np.full((7, 4, 2), np.nan)
    marks[1], marks[4], marks[5] = P, Q, R
    filled = fill_landmark_gaps(marks)
    np.testing.assert_allclose(filled[:, 0, 0], [10, 10, 20, 30, 40, 0, 0])
    with pytest.raises(VideoError, match="no face"):
        fill_landmark_gaps(np.full((5, 4, 2), np.nan))
    # window shrinks to the frame itself at the ends; the centroid follows the current frame
    rng = np.random.default_rng(1)
    m = rng.normal(size=(20, 4, 2)) * 5 + 100
    np.testing.assert_allclose(smooth_landmarks(m, 0), m[0])
    s = smooth_landmarks(m, 10)
    np.testing.assert_allclose(s.mean(axis=0), m[10].mean(axis=0))
    shape = m[4:17].mean(axis=0)
    np.testing.assert_allclose(s - s.mean(axis=0), shape - shape.mean(axis=0))


@pytest.mark.parametrize("scale,angle", [(1.0, 0.0), (1.6, 12.0)])
def test_landmark_crop_is_centred_on_the_mouth(scale: float, angle: float) -> None:
    n = 8
    shifts = [(-40.0 + 3 * t, 10.0 - 2 * t) for t in range(n)]  # the face moves over time
    frames, marks = face_video(n, scale, angle, shifts)
    marks[2] = np.nan  # a frame without detection is interpolated
    rois = mouth_rois(frames, 25.0, landmarks=marks)
    assert rois.shape == (n, 88, 88)
    # aligned mouth sits at the mean-face mouth; box (110:206, 81:177), then the 88 centre crop
    box = crop_box(tuple(REFERENCE_POINTS[3]))
    assert box == (110, 206, 81, 177)
    expected = REFERENCE_POINTS[3] - [box[2], box[0]] - 4
    for t in range(n):
        cx, cy = bright_centroid(unnormalise(rois[t]))
        assert abs(cx - expected[0]) < 0.5 and abs(cy - expected[1]) < 0.5, (t, cx, cy)
    # the disk is 8 px in the aligned frame whatever the face size
    area = (unnormalise(rois[0]) > 127).sum()
    assert abs(area - math.pi * 64) < 25


def test_landmark_file_and_errors(tmp_path: Path) -> None:
    frames, marks = face_video(6, 1.0, 0.0, [(0.0, 0.0)] * 6)
    path = tmp_path / "marks.npy"
    np.save(path, marks)
    np.testing.assert_array_equal(
        mouth_rois(frames, 25.0, landmarks=path), mouth_rois(frames, 25.0, landmarks=marks)
    )
    np.save(tmp_path / "short.npy", marks[:4])
    with pytest.raises(VideoError, match=r"short\.npy: landmarks must be .*6 frames"):
        mouth_rois(frames, 25.0, landmarks=tmp_path / "short.npy")
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(VideoError, match=r"obj\.npy"):
        mouth_rois(frames, 25.0, landmarks=tmp_path / "obj.npy")
    with pytest.raises(VideoError, match="no face found"):
        mouth_rois(frames, 25.0, landmarks=np.full((6, 4, 2), np.nan), source="talk.mp4")
    odd = marks.copy()
    odd[:, 3, 1] += 90  # a "mouth" far below the face: the crop guard refuses it
    with pytest.raises(VideoError, match="mouth is too far"):
        mouth_rois(frames, 25.0, landmarks=odd)


# --- face detector ------------------------------------------------------------------------


def test_missing_mediapipe_without_landmarks(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import fails
    frames = np.zeros((6, 120, 160, 3), np.uint8)
    with pytest.raises(VideoError) as info:
        mouth_rois(frames, 25.0, source="talk.mp4")
    msg = str(info.value)
    assert msg.startswith("talk.mp4: ") and "\n" not in msg
    assert "metis-cli[face]" in msg and "--landmarks" in msg and "pre-cropped" in msg


def _fake_mediapipe(per_model: dict[int, list]) -> types.ModuleType:
    """A stand-in for mediapipe's legacy face_detection: detections scripted per frame."""

    def det(box, kps):
        return types.SimpleNamespace(
            location_data=types.SimpleNamespace(
                relative_bounding_box=types.SimpleNamespace(
                    xmin=box[0], ymin=box[1], width=box[2], height=box[3]
                ),
                relative_keypoints=[types.SimpleNamespace(x=x, y=y) for x, y in kps],
            )
        )

    class FaceDetection:
        def __init__(self, model_selection: int, min_detection_confidence: float):
            assert min_detection_confidence == 0.5
            self.script = iter(per_model[model_selection])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def process(self, frame):
            assert frame.dtype == np.uint8 and frame.shape[-1] == 3
            return types.SimpleNamespace(detections=[det(*d) for d in next(self.script)] or None)

    mp = types.ModuleType("mediapipe")
    mp.solutions = types.SimpleNamespace(face_detection=types.SimpleNamespace(FaceDetection=FaceDetection))
    return mp


def test_detector_selection_rules(monkeypatch) -> None:
    kps_a = [(0.1, 0.2), (0.3, 0.2), (0.2, 0.3), (0.2, 0.4), (0.0, 0.0), (1.0, 1.0)]
    kps_b = [(0.55, 0.25), (0.75, 0.25), (0.65, 0.35), (0.655, 0.455), (0.0, 0.0), (1.0, 1.0)]
    big, degenerate = (0.05, 0.05, 0.5, 0.6), (0.9, 0.9, 0.05, 0.05)
    frames = np.zeros((3, 100, 200, 3), np.uint8)
    script = {
        1: [[], [], []],  # full range finds nothing anywhere -> short range is used
        0: [[(big, kps_a), (big, kps_b)], [(big, kps_a), (degenerate, kps_b)], []],
    }
    monkeypatch.setitem(sys.modules, "mediapipe", _fake_mediapipe(script))
    marks = detect_landmarks(frames)
    assert marks.shape == (3, 4, 2)
    # frame 0: the last detection; keypoints scaled by (W, H) and truncated
    np.testing.assert_array_equal(marks[0], [[110, 25], [150, 25], [130, 35], [131, 45]])
    # frame 1: the last box has (w - x) + (h - y) <= 0 -> the first detection
    np.testing.assert_array_equal(marks[1], [[20, 20], [60, 20], [40, 30], [40, 40]])
    assert np.isnan(marks[2]).all()

    monkeypatch.setitem(sys.modules, "mediapipe", _fake_mediapipe({1: [[]] * 3, 0: [[]] * 3}))
    with pytest.raises(VideoError, match=r"clip\.mp4: no face found in any frame"):
        detect_landmarks(frames, source="clip.mp4")


# --- features -----------------------------------------------------------------------------


def test_visual_features_on_encoder_dtype() -> None:
    torch.manual_seed(0)
    enc = VisualEncoder(tiny_config()).double()
    rois = mouth_rois(gray_levels(range(0, 120, 20)), 25.0)
    feats = visual_features(enc, rois)
    assert feats.shape == (6, tiny_config().adim) and feats.dtype == torch.float64
    assert not feats.requires_grad
    with torch.no_grad():
        direct = enc(torch.from_numpy(rois).double()[None, None])[0]
    torch.testing.assert_close(feats, direct)
