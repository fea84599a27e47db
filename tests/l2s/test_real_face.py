"""Lip-to-speech front end on a real photograph with the real MediaPipe detector.

The photo is scikit-image's ``data.astronaut()`` (512x512, shipped in the scikit-image wheel).
Its mouth was measured by hand on an enlarged view of the pixels: the mouth corners are at
about (203.9, 140.0) and (242.2, 141.9), the top of the upper lip at y = 138.3 and the bottom of
the lower lip at y = 154.4 (x about 222), so the mouth centre is taken as
x = (203.9 + 242.2) / 2 = 223.0 and y = (138.3 + 154.4) / 2 = 146.4.

A short video is made of it: 8 frames of 320x320 pixels, each the photo under a similarity
transform (a scale from 0.92 to 1.06 and a rotation from -4 to +3 degrees about the face centre
(223, 130), a shift of up to 6 px) seen through a 320x320 window whose corner is at (63, 0),
encoded lossily (mpeg4). BlazeFace sees a frame at 128 (short range) or 192 (full range) pixels,
so one of its input pixels is 1.7 to 2.5 frame pixels here; its keypoints are that coarse.
The expected mouth of each frame is the measured point under that frame's transform. The
detector's mouth keypoint and the centre of the mouth crop (mapped back into the frame) must
both lie within 5 px of it.

These tests need ``mediapipe`` (extra ``face`` or ``face-legacy``) and ``scikit-image``, which
the default test environment does not have: there they are skipped with that reason. CI runs
this file in a second environment with the legacy extra and sets ``METIS_REQUIRE_FACE=1``,
which turns every such skip into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST
from tests.l2s.synth import write_video

MOUTH = (223.0, 146.4)  # hand-measured, see the module docstring
TOLERANCE = 5.0  # pixels
N_FRAMES = 8
REQUIRED = os.environ.get("METIS_REQUIRE_FACE") == "1"


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"METIS_REQUIRE_FACE=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def mediapipe():
    if importlib.util.find_spec("mediapipe") is None:
        _unavailable("mediapipe is not installed (extra face or face-legacy; CI runs this in its own env)")
    if importlib.util.find_spec("skimage") is None:
        _unavailable("scikit-image is not installed (it ships the astronaut photo)")
    import mediapipe

    return mediapipe


FRAME = 320  # frame size; the window's top-left corner in the photo is WINDOW
WINDOW = (63.0, 0.0)
CENTRE = (223.0, 130.0)  # rotations and scalings are about the face centre


def _transforms() -> list[np.ndarray]:
    """Per-frame 2x3 matrices photo -> frame: similarity about CENTRE, shift, window (linear in t)."""
    out = []
    for t in range(N_FRAMES):
        scale = 0.92 + 0.02 * t
        angle = -4.0 + 1.0 * t
        shift = np.array([1.5 * t - 5.0, 6.0 - 1.0 * t])
        a = math.radians(angle)
        R = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        c = np.asarray(CENTRE)
        out.append(np.hstack([R, (c - R @ c + shift - np.asarray(WINDOW))[:, None]]))
    return out


@pytest.fixture(scope="module")
def astronaut_video(mediapipe, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(video path, expected mouth (x, y) per frame)."""
    import cv2
    from skimage import data

    photo = np.ascontiguousarray(data.astronaut())
    frames, expected = [], []
    for A in _transforms():
        # without WARP_INVERSE_MAP, warpAffine's matrix maps the photo onto the frame
        size = (FRAME, FRAME)
        frames.append(cv2.warpAffine(photo, A, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
        expected.append(A[:, :2] @ np.asarray(MOUTH) + A[:, 2])
    path = tmp_path_factory.mktemp("face") / "astronaut.mp4"
    write_video(path, np.stack(frames), 25, codec="mpeg4")
    return path, np.stack(expected)


def _routes(mediapipe) -> dict[str, str | None]:
    """Detector routes this mediapipe offers: route -> face model file (None = bundled)."""
    routes: dict[str, str | None] = {}
    if getattr(getattr(mediapipe, "solutions", None), "face_detection", None) is not None:
        routes["legacy"] = None
    bundled = Path(mediapipe.__file__).parent / "modules" / "face_detection"
    bundled = bundled / "face_detection_short_range.tflite"
    if os.environ.get("METIS_FACE_MODEL"):
        routes["tasks"] = os.environ["METIS_FACE_MODEL"]
    elif bundled.is_file():
        routes["tasks"] = str(bundled)  # the Tasks API of the legacy wheel, on its own model file
    else:
        from metis_cli.errors import MissingModelError
        from metis_cli.media.video import face_detector_files

        try:
            routes["tasks"] = str(face_detector_files()[-1])
        except MissingModelError:
            pass
    return routes


@pytest.mark.parametrize("route", ["legacy", "tasks"])
def test_detector_and_crop_centre_on_the_mouth(route, mediapipe, astronaut_video, monkeypatch) -> None:
    from metis_cli.media.video import detect_landmarks, mouth_crop_centres, mouth_rois, read_video

    routes = _routes(mediapipe)
    if route not in routes:
        if route == "legacy":
            pytest.skip(f"mediapipe {mediapipe.__version__} has no legacy solutions API (Tasks only)")
        _unavailable("no Tasks face-detector model (metis download face-detector, or METIS_FACE_MODEL)")
    monkeypatch.delenv("METIS_FACE_MODEL", raising=False)
    path, expected = astronaut_video
    frames, fps = read_video(path)
    assert frames.shape == (N_FRAMES, FRAME, FRAME, 3) and fps == 25
    marks = detect_landmarks(frames, str(path), face_model=routes[route])
    assert marks.shape == (N_FRAMES, 4, 2) and not np.isnan(marks).any()
    assert (marks[:, 0, 0] < marks[:, 1, 0]).all()  # the subject's right eye is on the image's left
    mouth_err = np.linalg.norm(marks[:, 3] - expected, axis=1)
    assert mouth_err.max() <= TOLERANCE, (route, marks[:, 3], expected)
    centres = mouth_crop_centres(marks)
    centre_err = np.linalg.norm(centres - expected, axis=1)
    assert centre_err.max() <= TOLERANCE, (route, centres, expected)
    rois = mouth_rois(frames, fps, landmarks=marks, source=str(path))
    assert rois.shape == (N_FRAMES, 88, 88) and np.isfinite(rois).all()


@pytest.mark.parametrize("how", ["default", "--face-model"])
def test_metis_l2s_end_to_end_on_a_real_face(
    how, mediapipe, astronaut_video, tiny_bundle, tmp_path, monkeypatch
) -> None:
    """`metis l2s` with the real detector and the tiny visual encoder: the default route (legacy
    where available), and the Tasks route through `--face-model FILE`."""
    import soundfile as sf
    from typer.testing import CliRunner

    from metis_cli.cli import app

    routes = _routes(mediapipe)
    monkeypatch.setenv("METIS_FACE_MODEL", "")  # restored after the test (--face-model sets it)
    extra: list[str] = []
    if how == "--face-model" or "legacy" not in routes:
        if "tasks" not in routes:
            _unavailable("no Tasks face-detector model (metis download face-detector, or METIS_FACE_MODEL)")
        extra = ["--face-model", str(routes["tasks"])]
    path, _ = astronaut_video
    out = tmp_path / "face.wav"
    vis = str(tiny_bundle / "visual" / "model.pth")
    res = CliRunner().invoke(
        app,
        ["l2s", str(path), "--visual-checkpoint", vis, "-o", str(out), "--json", *extra, *FAST],
        env={"METIS_CHECKPOINT_DIR": str(tiny_bundle)},
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout.splitlines()[0])
    assert report["status"] == "ok", report
    wav, sr = sf.read(out, dtype="float32")
    assert sr == 24_000 and len(wav) == 480 * 2 * N_FRAMES  # the video's duration (0.32 s)
    assert np.isfinite(wav).all()


def test_recorded_checksums_match_the_legacy_wheel_models(mediapipe) -> None:
    """`metis download face-detector` keeps the two BlazeFace files of the mediapipe 0.10.21 wheel;
    where that wheel is installed, its files must have exactly the recorded sizes and sha256."""
    import hashlib

    from metis_cli.media.video import FACE_DETECTOR_FILES

    root = Path(mediapipe.__file__).parent.parent
    if mediapipe.__version__ != "0.10.21":
        pytest.skip(f"mediapipe {mediapipe.__version__} is not the wheel the models come from")
    for member, size, sha256 in FACE_DETECTOR_FILES.values():
        data = (root / member).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha256, member
