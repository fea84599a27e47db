"""Audio I/O: librosa parity, error messages, atomic writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import librosa  # test dependency only
import numpy as np
import pytest
import soundfile as sf

from metis_cli.errors import AudioError, OutputError
from metis_cli.media import audio
from metis_cli.media.audio import AtomicWavWriter, load_audio, resample, resampled_length, write_wav_atomic

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wav"
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
    with pytest.raises(OutputError, match="out.wav: cannot write the output.*disk full"):
        write_wav_atomic(path, np.full(200, -0.5, dtype=np.float32))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_failed_first_write_leaves_nothing(tmp_path: Path, monkeypatch):
    def boom(self, data):
        raise OSError("device error")

    monkeypatch.setattr(sf.SoundFile, "write", boom)
    with pytest.raises(OutputError, match="new.wav: cannot write the output.*device error"):
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
    with pytest.raises(OutputError, match="directory does not exist"):
        write_wav_atomic(tmp_path / "missing" / "a.wav", np.zeros(10, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


# -- containers PyAV reads, in-memory audio, block reading ------------------------------------


def _write_m4a(path: Path, x: np.ndarray, sr: int) -> Path:
    """An AAC .m4a of (C, N) float32 samples, written with PyAV (libsndfile cannot read it)."""
    import av

    layout = "mono" if x.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, np.float32), format="fltp", layout=layout)
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _decode_reference(path: Path) -> tuple[np.ndarray, int]:
    """(N,) mono float32 at the native rate, decoded independently with PyAV."""
    import av

    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        frames = [f.to_ndarray() for f in c.decode(st)]
        return np.concatenate(frames, axis=1).mean(axis=0, dtype=np.float32), st.rate


@pytest.fixture
def m4a(tmp_path: Path) -> Path:
    sr = 44100
    t = np.arange(int(sr * 1.5)) / sr
    x = np.stack([0.4 * np.sin(2 * np.pi * 330 * t), 0.2 * np.sin(2 * np.pi * 550 * t)])
    return _write_m4a(tmp_path / "voice.m4a", x.astype(np.float32), sr)


def test_soundfile_cannot_read_the_m4a(m4a: Path):
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(m4a))


@pytest.mark.parametrize("sr", [16000, 24000])
def test_m4a_decodes_through_pyav(m4a: Path, sr: int):
    ref, native = _decode_reference(m4a)
    ours = load_audio(m4a, sr)
    assert native == 44100 and len(ref) > 44100
    np.testing.assert_array_equal(ours, resample(ref, native, sr))
    assert np.abs(ours).max() > 0.2  # real signal, not silence


def test_m4a_probe_and_blocks_equal_whole_decoding(m4a: Path):
    ref, native = _decode_reference(m4a)
    info = audio.probe(m4a)
    assert (info.frames, info.sample_rate, info.channels) == (len(ref), native, 2)
    with audio.open_blocks(m4a) as src:
        step = 7001
        blocks = [src.read(a, a + step) for a in range(0, info.frames, step)]
        np.testing.assert_array_equal(np.concatenate(blocks), ref)
        # overlapping and backward reads (inside the kept window, and from the start again)
        np.testing.assert_array_equal(src.read(50000, 52000), ref[50000:52000])
        np.testing.assert_array_equal(src.read(10, 20), ref[10:20])
        assert src.read(info.frames - 5, info.frames + 100).shape == (5,)


def test_wav_blocks_equal_whole_file(tmp_path: Path):
    rng = np.random.default_rng(7)
    data = (rng.standard_normal((30011, 2)) * 0.2).astype(np.float32)
    path = tmp_path / "st.wav"
    sf.write(path, data, 22050, subtype="FLOAT")
    with audio.open_blocks(path) as src:
        assert (src.info.frames, src.info.sample_rate, src.info.channels) == (30011, 22050, 2)
        np.testing.assert_array_equal(src.read(1000, 9000), data[1000:9000].mean(axis=1, dtype=np.float32))


def test_container_without_audio_is_one_line(tmp_path: Path):
    import av

    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as out:
        st = out.add_stream("mpeg4", rate=25)
        st.width, st.height, st.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, np.uint8), format="rgb24")
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    with pytest.raises(AudioError, match="silent.mp4: no audio stream") as info:
        load_audio(path, 16000)
    assert "\n" not in str(info.value)


def test_audio_array_equals_the_file(tmp_path: Path):
    rng = np.random.default_rng(5)
    data = (rng.standard_normal((22050, 2)) * 0.2).clip(-1, 1).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, data, 22050, subtype="FLOAT")
    arr = audio.AudioArray(data, 22050, name="upload.wav")
    np.testing.assert_array_equal(load_audio(arr, 16000), load_audio(path, 16000))
    np.testing.assert_array_equal(
        load_audio(audio.AudioArray(data[:, 0], 22050), 24000),
        load_audio(audio.AudioArray(data[:, :1].astype(np.float64), 22050), 24000),
    )
    pcm = (data[:, 0] * 32767).astype(np.int16)
    sf.write(tmp_path / "pcm.wav", pcm, 22050, subtype="PCM_16")
    np.testing.assert_array_equal(
        load_audio(audio.AudioArray(pcm, 22050), 24000), load_audio(tmp_path / "pcm.wav", 24000)
    )
    with audio.open_blocks(arr) as src:
        assert src.info == audio.AudioInfo(22050, 22050, 2, "upload.wav")
        np.testing.assert_array_equal(src.read(100, 200), data[100:200].mean(axis=1, dtype=np.float32))


@pytest.mark.parametrize(
    ("samples", "sr", "message"),
    [
        (np.zeros(0, np.float32), 16000, "upload: audio has zero samples"),
        (np.array([0.0, np.nan], np.float32), 16000, "upload: audio contains non-finite"),
        (
            np.zeros((2, 16000), np.float32),
            16000,
            r"upload: expected samples of shape \(N,\) or \(N, channels\)",
        ),
        (np.zeros((4, 4, 4), np.float32), 16000, "upload: expected samples of shape"),
        (np.zeros(100, np.float32), 0, "upload: sample_rate must be a positive integer"),
        (np.zeros(100, np.float32), 16000.5, "upload: sample_rate must be a positive integer"),
        (np.array(["a", "b"]), 16000, "upload: unsupported sample type"),
    ],
)
def test_bad_audio_arrays_are_one_line(samples, sr, message):
    with pytest.raises(AudioError, match=message):
        load_audio(audio.AudioArray(samples, sr, name="upload"), 24000)


# -- output formats, names, failures ----------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype"),
    [
        ("wav", "WAV", "PCM_16"),
        ("flac", "FLAC", "PCM_16"),
        ("ogg", "OGG", "VORBIS"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ],
)
def test_extension_names_the_written_format(tmp_path: Path, ext: str, fmt: str, subtype: str):
    if ext not in audio.writable_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    wav = (0.4 * np.sin(np.arange(24000) * 2 * np.pi * 440 / 24000)).astype(np.float32)
    path = audio.write_audio_atomic(tmp_path / f"out.{ext}", wav, 24000)
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate) == (fmt, subtype, 24000)
    back = load_audio(path, 24000)
    assert abs(len(back) - len(wav)) < 2400  # lossy codecs pad a little
    n = min(len(back), len(wav), 12000)
    if ext in ("wav", "flac"):
        np.testing.assert_allclose(back[:n], wav[:n], atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == [f"out.{ext}"]


def test_streaming_writer_follows_the_extension(tmp_path: Path):
    path = tmp_path / "long.flac"
    with AtomicWavWriter(path, sr=24000) as w:
        for _ in range(3):
            w.write(np.full(1000, 0.25, np.float32))
    assert sf.info(path).format == "FLAC" and sf.info(path).frames == 3000


def test_output_format():
    assert audio.output_format("x.WAV") == "wav"
    assert audio.output_format("dir/x.flac") == "flac"
    assert audio.output_format("noext") == "wav"
    with pytest.raises(audio.InputError, match=r"x.aac: cannot write \.aac audio \(writable: wav, flac, ogg"):
        audio.output_format("x.aac")
    with pytest.raises(audio.InputError, match="cannot write .aac"):
        write_wav_atomic("x.aac", np.zeros(10, np.float32))


def test_a_250_character_name_works(tmp_path: Path):
    name = "n" * 246 + ".wav"
    path = write_wav_atomic(tmp_path / name, np.zeros(100, np.float32))
    assert path.name == name and sf.info(path).frames == 100
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_too_long_name_is_one_line_output_error(tmp_path: Path):
    path = tmp_path / ("n" * 300 + ".wav")
    with pytest.raises(OutputError, match="cannot write the output \\(file name too long\\)") as info:
        write_wav_atomic(path, np.zeros(100, np.float32))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_umask_permissions(tmp_path: Path):
    old = os.umask(0o027)
    try:
        path = write_wav_atomic(tmp_path / "p.wav", np.zeros(10, np.float32))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A real 200 KiB tmpfs (root only); skipped with the reason where mounting is impossible."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_full_filesystem_is_one_line_and_leaves_nothing(tiny_fs: Path, ext: str):
    (tiny_fs / f"keep.{ext}").write_bytes(b"previous")
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, 24000 * 20).astype(np.float32)  # ~1 MB as PCM_16
    with pytest.raises(
        OutputError, match=f"big.{ext}: cannot write the output \\(no space left on device\\)"
    ) as e:
        write_wav_atomic(tiny_fs / f"big.{ext}", wav)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tiny_fs.iterdir()) == [f"keep.{ext}"]
    with pytest.raises(OutputError, match="no space left"):
        with AtomicWavWriter(tiny_fs / "stream.wav") as w:
            for _ in range(20):
                w.write(wav[:24000])
    assert sorted(p.name for p in tiny_fs.iterdir()) == [f"keep.{ext}"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, MemoryError])
def test_any_base_exception_removes_the_temp(tmp_path: Path, exc: type[BaseException]):
    with pytest.raises(exc):
        with AtomicWavWriter(tmp_path / "x.wav") as w:
            w.write(np.zeros(100, np.float32))
            assert len(list(tmp_path.iterdir())) == 1  # the hidden temporary file
            raise exc()
    assert list(tmp_path.iterdir()) == []
    assert audio.remove_temp_files() == []


_SIGTERM_CHILD = """
import sys, numpy as np
from metis_cli.media import audio
with audio.cleanup_on_signal():
    with audio.AtomicWavWriter(sys.argv[1]) as w:
        w.write(np.zeros(24000, np.float32))
        print("writing", flush=True)
        while True:
            w.write(np.zeros(2400, np.float32))
"""


def test_sigterm_while_streaming_exits_143_and_leaves_no_temp(tmp_path: Path):
    out = tmp_path / "long.wav"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_CHILD, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "writing"
    assert any(p.name.startswith(".metis-") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# -- in-memory uploads and encoded outputs (no temporary files) -------------------------------


@pytest.mark.parametrize("kind", ["wav", "flac", "m4a"])
def test_decode_bytes_equals_the_file(tmp_path: Path, m4a: Path, kind: str):
    if kind == "m4a":
        path = m4a
    else:
        rng = np.random.default_rng(9)
        path = tmp_path / f"up.{kind}"
        sf.write(path, (rng.standard_normal((30000, 2)) * 0.1).astype(np.float32), 44100, subtype="PCM_16")
    before = sorted(p.name for p in tmp_path.iterdir())
    arr = audio.decode_bytes(path.read_bytes(), name=f"upload.{kind}")
    assert isinstance(arr, audio.AudioArray) and arr.name == f"upload.{kind}" and arr.sample_rate == 44100
    np.testing.assert_array_equal(load_audio(arr, 16000), load_audio(path, 16000))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_decode_bytes_errors_name_the_upload():
    with pytest.raises(AudioError, match="upload.bin: unreadable or unsupported audio format"):
        audio.decode_bytes(b"not audio at all" * 100, name="upload.bin")
    with pytest.raises(AudioError, match="upload.wav: empty upload"):
        audio.decode_bytes(b"", name="upload.wav")


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_encode_audio_round_trips(tmp_path: Path, fmt: str):
    wav = (0.3 * np.sin(np.arange(24000) * 2 * np.pi * 300 / 24000)).astype(np.float32)
    data = audio.encode_audio(wav, 24000, fmt)
    if fmt == "wav":
        write_wav_atomic(tmp_path / "ref.wav", wav)
        assert data == (tmp_path / "ref.wav").read_bytes()
    back = load_audio(audio.decode_bytes(data, f"x.{fmt}"), 24000)
    assert abs(len(back) - len(wav)) < 2400
    with pytest.raises(audio.InputError, match="cannot write .aac"):
        audio.encode_audio(wav, 24000, "aac")
