"""Registered voices: a name → prompt audio, its transcript and language.

Voices come from the operator's `--voices voices.json` (read once at start; paths in it are
relative to the file) and from uploads (`POST /v1/voices`), kept in memory and, with
`--voices-dir DIR`, also in that folder (`DIR/<id>.wav` + `DIR/<id>.json`, written atomically;
reloaded at start). A client names a voice by its opaque id or its name; the service never
opens a path a client names. voices.json:

    {"alice": {"audio": "prompts/alice.wav", "text": "Transcript of the prompt.", "language": "en"}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from metis_cli import jobs, options
from metis_cli.constants import TRAIN_MIN_SECONDS
from metis_cli.errors import MetisError, UsageError
from metis_cli.media.audio import AudioArray
from metis_cli.serve.media import decode_upload, seconds

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ID_RE = re.compile(r"v_[0-9a-f]{16}")
MAX_UPLOADED = 256

log = logging.getLogger("metis.serve")


def valid_name(name: Any) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and ".." not in name


@dataclass
class Voice:
    id: str
    name: str
    audio: AudioArray
    text: str
    language: str | None  # None: detect
    source: str  # "config" | "upload"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "voice",
            "name": self.name,
            "language": self.language or "auto",
            "seconds": round(seconds(self.audio), 3),
            "source": self.source,
        }


class VoiceStore:
    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._by_id: dict[str, Voice] = {}
        self._lock = threading.Lock()

    # -- the operator's voices ------------------------------------------------------------------
    def load_file(self, path: Path, max_seconds: float | None = None) -> int:
        """Read voices.json (UsageError naming the file and the voice on any problem, a voice
        longer than `max_seconds` included). Each voice's id is derived from its name and
        content, so it stays the same across restarts."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{path}: voices file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: cannot read the voices file ({exc})") from None
        if isinstance(data, list):
            data = {str(v.get("name")): v for v in data if isinstance(v, dict)}
        if not isinstance(data, dict) or not data:
            raise UsageError(f"{path}: must be a JSON object of name -> {{audio, text, language}}")
        base = Path(path).parent
        for name, spec in data.items():
            where = f"{path}: voice {name!r}"
            if not valid_name(name):
                raise UsageError(f"{where}: names are 1-64 letters, digits, '_', '.', '-'")
            if not isinstance(spec, dict) or not isinstance(spec.get("audio"), str):
                raise UsageError(f'{where}: needs "audio" (a file) and "text" (its transcript)')
            audio_path = base / spec["audio"]
            try:
                audio = decode_upload(audio_path.read_bytes(), name)
                text = jobs.check_text(
                    spec.get("text") if isinstance(spec.get("text"), str) else None, "text"
                )
                language = _language(spec.get("language"))
            except OSError as exc:
                raise UsageError(f"{where}: cannot read {audio_path} ({exc.strerror or exc})") from None
            except MetisError as exc:
                raise UsageError(f"{where}: {exc}") from None
            secs = seconds(audio)
            if max_seconds is not None and secs > max_seconds:
                raise UsageError(
                    f"{where}: {secs:.1f} s of audio (at most {max_seconds:g} s: --max-voice-seconds)"
                )
            for warning in length_warnings(secs):
                log.warning("%s: %s", where, warning)
            self._put(Voice(stable_id(name, audio, text, language), name, audio, text, language, "config"))
        return len(data)

    def load_folder(self) -> int:
        """Uploaded voices kept in --voices-dir by an earlier run."""
        if self.folder is None:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        n = 0
        for meta_path in sorted(self.folder.glob("v_*.json")):
            vid = meta_path.stem
            if not ID_RE.fullmatch(vid):
                continue
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                samples, rate = sf.read(str(self.folder / f"{vid}.wav"), dtype="float32", always_2d=True)
                audio = AudioArray(samples, int(rate), meta["name"])
                self._put(Voice(vid, meta["name"], audio, meta["text"], meta.get("language"), "upload"))
                n += 1
            except (OSError, KeyError, ValueError, RuntimeError, sf.LibsndfileError):
                continue  # a damaged entry is skipped, never fatal
        return n

    # -- uploads ----------------------------------------------------------------------------------
    def add(self, audio: AudioArray, text: str, language: str | None, name: str | None = None) -> Voice:
        if name is not None and ID_RE.fullmatch(name) is not None:
            raise KeyError(name)  # a name must never be mistaken for another voice's id
        vid = _new_id()
        voice = Voice(
            vid,
            name or vid,
            AudioArray(audio.samples, audio.sample_rate, name or vid),
            text,
            language,
            "upload",
        )
        with self._lock:
            if sum(v.source == "upload" for v in self._by_id.values()) >= MAX_UPLOADED:
                raise OverflowError(f"at most {MAX_UPLOADED} uploaded voices; delete some first")
            if name is not None and any(name in (v.name, v.id) for v in self._by_id.values()):
                raise KeyError(name)
            self._by_id[vid] = voice
        if self.folder is not None:
            self._save(voice)
        return voice

    def delete(self, key: str) -> Voice:
        """Remove an uploaded voice named by id or name (KeyError: unknown; PermissionError: an
        operator's voice)."""
        voice = self.get(key)
        with self._lock:
            if voice is None or voice.id not in self._by_id:
                raise KeyError(key)
            if voice.source != "upload":
                raise PermissionError(key)
            del self._by_id[voice.id]
        vid = voice.id
        if self.folder is not None:
            for suffix in (".json", ".wav"):
                try:
                    (self.folder / f"{vid}{suffix}").unlink()
                except FileNotFoundError:
                    pass
        return voice

    def get(self, key: Any) -> Voice | None:
        """A voice by id or name; anything else (paths included) is None."""
        if not isinstance(key, str):
            return None
        with self._lock:
            if key in self._by_id:
                return self._by_id[key]
            if valid_name(key):
                for v in self._by_id.values():
                    if v.name == key:
                        return v
        return None

    def list(self) -> list[Voice]:
        with self._lock:
            return list(self._by_id.values())

    def names(self) -> list[str]:
        return sorted(v.name for v in self.list())

    # -- internals ----------------------------------------------------------------------------------
    def _put(self, voice: Voice) -> None:
        with self._lock:
            if any(voice.name in (v.name, v.id) or voice.id == v.name for v in self._by_id.values()):
                raise UsageError(f"voice {voice.name!r} is defined twice (or as another voice's id)")
            self._by_id[voice.id] = voice

    def _save(self, voice: Voice) -> None:
        assert self.folder is not None
        meta = {"name": voice.name, "text": voice.text, "language": voice.language}
        wav = self.folder / f"{voice.id}.wav"
        _atomic(
            wav,
            lambda p: sf.write(
                str(p), voice.audio.samples, voice.audio.sample_rate, format="WAV", subtype="FLOAT"
            ),
        )
        _atomic(
            self.folder / f"{voice.id}.json",
            lambda p: p.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8"),
        )


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _new_id() -> str:
    return "v_" + secrets.token_hex(8)


def stable_id(name: str, audio: AudioArray, text: str, language: str | None) -> str:
    """The id of an operator's voice: a hash of its name and content (the same at every start)."""
    digest = hashlib.sha256()
    for part in (name, text, language or "auto", str(audio.sample_rate)):
        digest.update(part.encode("utf-8") + b"\0")
    digest.update(audio.samples.astype("<f4").tobytes())
    return "v_" + digest.hexdigest()[:16]


def length_warnings(secs: float) -> list[str]:
    """Warnings for a voice prompt outside the training range (the models saw 3-30 s)."""
    if secs < TRAIN_MIN_SECONDS:
        return [f"{secs:.1f} s of audio: a voice prompt under {TRAIN_MIN_SECONDS:g} s gives a weak likeness"]
    return []


def _language(value: Any) -> str | None:
    if value in (None, "", "auto"):
        return None
    if value not in options.LANGUAGE_CHOICES:
        raise UsageError(f"language: must be one of {', '.join(options.LANGUAGE_CHOICES)} (got {value!r})")
    return value
