"""Audio I/O: librosa parity, error messages, atomic writes."""

from __future__ import annotations

from pathlib import Path

import librosa  # test dependency only
import numpy as np
import pytest
import soundfile as sf

from metis_cli import audio
from metis_cli.audio import AtomicWavWriter, load_audio, resample, resampled_length, write_wav_atomic
from metis_cli.errors import AudioError

FIXTURES = Path(__file__).parent / "fixtures" / "wav"
FIXTURE_WAVS = sorted(FIXTURES.glob("*/*.wav"))


def test_fixtures_present():
    assert len(FIXTURE_WAVS) >= 7


@pytest.mark.parametrize("sr", [16000, 24000])
@pytest.mark.parametrize("path", FIXTURE_WAVS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_load_matches_librosa_on_fixtures(path: Path, sr: int):
    ours = load_audio(path, sr)
    ref, _ = librosa.load(path, sr=sr)
    assert ours.dtype == np.float32 and ours.ndim == 1
    np.testing.assert_array_equal(ours, ref)


def _write_synthetic(path: Path, data: np.ndarray, sr: int, subtype: str) -> None:
    sf.write(path, data, sr, subtype=subtype)


@pytest.mark.parametrize("sr", [16000, 24000])
def test_stereo_int16_matches_librosa(tmp_path: Path, sr: int):
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((24011, 2)) * 0.2).clip(-1, 1)
    path = tmp_path / "stereo.wav"
    _write_synthetic(path, data, 22050, "PCM_16")
    ours = load_audio(path, sr)
    ref, _ = librosa.load(path, sr=sr)
    np.testing.assert_array_equal(ours, ref)
    assert ours.shape == (resampled_length(24011, 22050, sr),)


@pytest.mark.parametrize("sr", [16000, 24000])
def test_float_44k1_matches_librosa(tmp_path: Path, sr: int):
    rng = np.random.default_rng(2)
    t = np.arange(44100 + 37) / 44100
    data = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    path = tmp_path / "float.wav"
    _write_synthetic(path, data, 44100, "FLOAT")
    ours = load_audio(path, sr)
    ref, _ = librosa.load(path, sr=sr)
    np.testing.assert_array_equal(ours, ref)


def test_float_three_channels_matches_librosa(tmp_path: Path):
    rng = np.random.default_rng(3)
    data = (rng.standard_normal((5000, 3)) * 0.3).astype(np.float32)
    path = tmp_path / "three.wav"
    _write_synthetic(path, data, 48000, "FLOAT")
    np.testing.assert_array_equal(load_audio(path, 16000), librosa.load(path, sr=16000)[0])


RATE_PAIRS = [(24000, 16000), (44100, 16000), (16000, 24000), (22050, 24000)]


@pytest.mark.parametrize("n", [1, 2, 3, 479, 480, 481, 12345])
@pytest.mark.parametrize(("sr_in", "sr_out"), RATE_PAIRS)
def test_resample_matches_librosa_lengths_and_values(n: int, sr_in: int, sr_out: int):
    wav = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    ours = resample(wav, sr_in, sr_out)
    ref = librosa.resample(wav, orig_sr=sr_in, target_sr=sr_out, res_type="soxr_hq")
    assert ours.shape == ref.shape == (resampled_length(n, sr_in, sr_out),)
    np.testing.assert_array_equal(ours, ref)


def test_resample_same_rate_is_identity():
    wav = np.linspace(-1, 1, 100, dtype=np.float32)
    np.testing.assert_array_equal(resample(wav, 24000, 24000), wav)


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav.*no such"):
        load_audio(path, 16000)


def test_unreadable_file(tmp_path: Path):
    path = tmp_path / "junk.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="junk.wav.*unreadable") as info:
        load_audio(path, 16000)
    assert "\n" not in str(info.value)


def test_directory_is_rejected(tmp_path: Path):
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(tmp_path, 16000)


def test_zero_samples(tmp_path: Path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 24000)
    with pytest.raises(AudioError, match="empty.wav.*zero samples"):
        load_audio(path, 16000)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float):
    data = np.zeros(1000, dtype=np.float32)
    data[500] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, data, 24000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*non-finite"):
        load_audio(path, 24000)


def test_write_wav_atomic_roundtrip(tmp_path: Path):
    wav = np.sin(np.linspace(0, 100, 4800)).astype(np.float32) * 0.5
    path = write_wav_atomic(tmp_path / "out.wav", wav)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (24000, 1, "PCM_16", 4800)
    # identical bytes to what the official soundfile.write produces
    sf.write(tmp_path / "ref.wav", wav, 24000)
    assert path.read_bytes() == (tmp_path / "ref.wav").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav", "ref.wav"]


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path: Path, monkeypatch):
    path = tmp_path / "out.wav"
    write_wav_atomic(path, np.full(100, 0.25, dtype=np.float32))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(audio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_wav_atomic(path, np.full(200, -0.5, dtype=np.float32))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_failed_first_write_leaves_nothing(tmp_path: Path, monkeypatch):
    def boom(self, data):
        raise OSError("device error")

    monkeypatch.setattr(sf.SoundFile, "write", boom)
    with pytest.raises(OSError, match="device error"):
        write_wav_atomic(tmp_path / "new.wav", np.zeros(10, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


def test_streaming_writer_success(tmp_path: Path):
    rng = np.random.default_rng(4)
    blocks = [rng.uniform(-0.9, 0.9, n).astype(np.float32) for n in (100, 1, 4799)]
    path = tmp_path / "stream.wav"
    with AtomicWavWriter(path, sr=24000) as w:
        for b in blocks:
            w.write(b)
            assert not path.exists()  # only appears on success
    assert w.frames_written == 4900
    sf.write(tmp_path / "ref.wav", np.concatenate(blocks), 24000)
    assert path.read_bytes() == (tmp_path / "ref.wav").read_bytes()


def test_streaming_writer_error_removes_temp_keeps_previous(tmp_path: Path):
    path = tmp_path / "stream.wav"
    write_wav_atomic(path, np.full(50, 0.1, dtype=np.float32))
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with AtomicWavWriter(path) as w:
            w.write(np.zeros(1000, dtype=np.float32))
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["stream.wav"]


def test_writer_rejects_bad_input(tmp_path: Path):
    with pytest.raises(AudioError, match="mono"):
        write_wav_atomic(tmp_path / "a.wav", np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(AudioError, match="non-finite"):
        write_wav_atomic(tmp_path / "a.wav", np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(AudioError, match="directory does not exist"):
        write_wav_atomic(tmp_path / "missing" / "a.wav", np.zeros(10, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []
