"""Training data: manifests, a content-addressed feature cache, and token items.

A fine-tuning manifest is JSON lines, one object per example, with the task's keys (audio
paths relative to the manifest's folder):

* se  `{"input": noisy, "target": clean}`
* tse `{"mix": mixture, "enrol": enrolment, "target": clean}`
* vc  `{"source": utterance, "reference": speaker, "target": converted}`
* tts `{"text": transcript, "audio": utterance}` (+ `"prompt"` / `"prompt_text"`, `"language"`)
* l2s `{"video": silent lip video, "target": its speech}` (+ `"prompt"` speaker wav,
  `"landmarks"` .npy face keypoints of the video, as `metis l2s --landmarks`)

For se/tse/vc the model hears `input` (mix, source) with the optional prompt (enrolment,
reference) prepended, as at inference; its frames form the never-masked prompt, and
x0 = [codes(prompt) ; codes(target)]. For tts x0 = [codes(prompt) ; codes(audio)] with phones
g2p(prompt_text) ++ g2p(text), and prompt lengths are drawn as in spec §6.3.
For l2s the condition is the one inference builds (`tasks.build_l2s`, spec §10): visual
features V (T_v, D) at 25 fps, linearly upsampled ×2 to 50 Hz, after Lp zero rows for the
prompt; x0 = [codes(prompt) ; codes(target)]. The target's token count and 2·T_v may differ
by a few frames (container/codec padding): both are cut to the shorter, so condition frame i
and target token i cover the same 20 ms from the start of both files. A difference of more
than `L2S_MAX_MISMATCH` frames (or 5 % of the length) means the pair is not aligned: the
example is skipped with a report.
A folder with `input/` (or `noisy/`), `target/` (or `clean/`) and optionally `prompt/`
subfolders of same-named files is also accepted for se/tse/vc.
Pre-training data is a folder of audio files (searched recursively) or a text file of paths.

Features are computed once through the engine's tokenizers and stored under the cache
folder as `<sha256>.safetensors`, keyed by the bytes of the audio files and the identity of
the SSL model and semantic codec (file sizes, modification times and headers, and configs).
Visual features (l2s, 25 fps, before upsampling) are cached the same way, keyed by the bytes
of the video and of the landmarks file (if any) and the identity of the visual checkpoint
(`model.pth` and the `model.json` beside it), so the visual encoder runs once per video.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from metis_cli.assets.cards import get_card
from metis_cli.assets.umask import apply_umask
from metis_cli.errors import InputError, UsageError

log = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg")
L2S_MAX_MISMATCH = 10  # frames (0.2 s) that target tokens and 2 x video frames may differ by
FOLDER_ROLES = {"input": ("input", "noisy"), "target": ("target", "clean"), "prompt": ("prompt",)}


@dataclass(frozen=True)
class Example:
    """One training example (the roles a task does not use are None)."""

    input: Path | None  # what the model hears (se input, tse mix, vc source) or sees (l2s video)
    target: Path  # what it should produce (tts: the utterance)
    prompt: Path | None = None  # tse enrolment, vc reference, tts / l2s prompt utterance
    text: str | None = None  # tts: transcript of `target`
    prompt_text: str | None = None  # tts: transcript of `prompt`
    language: str | None = None  # tts: language of `text` (detected when None)
    prompt_language: str | None = None  # tts: language of `prompt_text` (default: `language`)
    landmarks: Path | None = None  # l2s: face keypoints (.npy) of the video
    where: str = ""  # "manifest.jsonl:12" for reports


@dataclass
class Item:
    """Tokens (and condition) of one example, ready for batching."""

    x0: torch.Tensor  # (T,) int64 semantic tokens [prompt ; target]
    prompt_len: int  # leading frames never masked (0 without prompt; drawn when not explicit)
    cond: torch.Tensor | None = None  # (T, D) float32 SSL features of [prompt ; input] (l2s: visual)
    phones: torch.Tensor | None = None  # (P,) int64 phone ids (tts)

    def __len__(self) -> int:
        return int(self.x0.shape[0])


# Manifest keys per task: (required, optional). Audio paths are relative to the manifest.
MANIFEST_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "se": (("input", "target"), ()),
    "tse": (("mix", "enrol", "target"), ()),
    "vc": (("source", "reference", "target"), ()),
    "tts": (("text", "audio"), ("prompt", "prompt_text", "language", "prompt_language")),
    "l2s": (("video", "target"), ("prompt", "landmarks")),
}
_FILE_KEYS = {
    "input",
    "target",
    "mix",
    "enrol",
    "source",
    "reference",
    "audio",
    "prompt",
    "video",
    "landmarks",
}


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTS)


def _role_dir(root: Path, role: str) -> Path | None:
    for name in FOLDER_ROLES[role]:
        if (root / name).is_dir():
            return root / name
    return None


def _example(task: str, d: dict, base: Path, where: str) -> Example:
    """The example of one manifest object; raises ValueError naming the problem."""
    if not isinstance(d, dict):
        raise ValueError(f"not a JSON object but {type(d).__name__}")
    required, optional = MANIFEST_KEYS[task]
    missing = [k for k in required if d.get(k) in (None, "")]
    if missing:
        raise ValueError(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    for k in (*required, *optional):
        if k in d and d[k] is not None and not isinstance(d[k], str):
            raise ValueError(f"{k!r} must be a string")
    paths = {k: base / d[k] for k in (*required, *optional) if k in _FILE_KEYS and d.get(k)}
    for k, p in paths.items():
        if not p.is_file():
            raise ValueError(f"{k!r}: no such file {p}")
    if task == "se":
        return Example(paths["input"], paths["target"], where=where)
    if task == "tse":
        return Example(paths["mix"], paths["target"], paths["enrol"], where=where)
    if task == "vc":
        return Example(paths["source"], paths["target"], paths["reference"], where=where)
    if task == "tts":
        if not d["text"].strip():
            raise ValueError("empty 'text'")
        if "prompt" in paths and not (d.get("prompt_text") or "").strip():
            raise ValueError("'prompt' needs its transcript 'prompt_text'")
        return Example(
            None,
            paths["audio"],
            paths.get("prompt"),
            text=d["text"],
            prompt_text=d.get("prompt_text") if "prompt" in paths else None,
            language=d.get("language"),
            prompt_language=d.get("prompt_language") or d.get("language"),
            where=where,
        )
    if task == "l2s":
        video, target, prompt = paths["video"], paths["target"], paths.get("prompt")
        return Example(video, target, prompt, landmarks=paths.get("landmarks"), where=where)
    raise InputError(f"fine-tuning task '{task}' has no data reader")


def read_manifest(path: Path, task: str) -> tuple[list[Example], list[str]]:
    """Examples of a JSON-lines manifest and one problem line per skipped line.

    Each line is one JSON object with the task's keys (`MANIFEST_KEYS`); blank lines and lines
    starting with `#` are ignored. A bad line (invalid JSON, a missing key, a missing audio
    file) is reported as "<manifest>:<line>: <problem>" and skipped.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the manifest ({exc})") from None
    examples, problems = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        try:
            examples.append(_example(task, d, path.parent, where))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    return examples, problems


def read_folder(path: Path) -> list[Example]:
    """Examples of a folder with input/ (or noisy/), target/ (or clean/) [and prompt/]."""
    inp, tgt, prm = (_role_dir(path, r) for r in ("input", "target", "prompt"))
    if inp is None or tgt is None:
        raise UsageError(f"{path}: needs input/ (or noisy/) and target/ (or clean/) subfolders")
    out = []
    for f in _audio_files(inp):
        rel = f.relative_to(inp)
        if not (tgt / rel).is_file():
            raise InputError(f"{f}: no target file {tgt / rel}")
        if prm is not None and not (prm / rel).is_file():
            raise InputError(f"{f}: no prompt file {prm / rel}")
        out.append(Example(f, tgt / rel, prm / rel if prm is not None else None, where=str(f)))
    return out


def read_examples(path: Path, task: str = "se") -> tuple[list[Example], list[str]]:
    """Examples of a manifest (see `read_manifest`) or, for se/tse/vc, a data folder."""
    path = Path(path)
    if task not in MANIFEST_KEYS:
        raise InputError(f"no training data format for task '{task}'")
    if path.is_file():
        examples, problems = read_manifest(path, task)
    elif path.is_dir() and task in ("se", "tse", "vc"):
        examples, problems = read_folder(path), []
    elif path.is_dir():
        raise UsageError(f"{path}: {task} training data must be a JSON-lines manifest, not a folder")
    else:
        raise UsageError(f"{path}: no such manifest or data folder")
    if not examples:
        extra = f" ({len(problems)} bad line(s) skipped)" if problems else ""
        raise InputError(f"{path}: no usable training examples{extra}")
    return examples, problems


def read_audio_list(path: Path) -> list[Path]:
    """Pre-training audio: every audio file under a folder, or the paths listed in a text file."""
    path = Path(path)
    if path.is_dir():
        files = _audio_files(path)
    elif path.is_file():
        files = [path.parent / ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise InputError(f"{path}: audio file {missing[0]} does not exist")
    else:
        raise UsageError(f"{path}: no such audio folder or list file")
    if not files:
        raise InputError(f"{path}: no audio files found")
    return files


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_identity(path: Path) -> dict:
    st = path.stat()
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return {
        "name": path.name,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "head": hashlib.sha256(head).hexdigest(),
    }


def _write_entry(path: Path, x: torch.Tensor) -> None:
    """Write one cache entry atomically. The temporary name is unique per process: ranks of a
    torchrun launch fill the same cache at once and may compute the same entry (a shared
    prompt); the last rename wins and every reader sees a complete file."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    try:
        save_file({"x": x.contiguous()}, str(tmp))
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FeatureCache:
    """SSL features and semantic codes of (concatenated) audio files, computed once.

    engine: an `Engine` whose tokenizers give `ssl_features` and `semantic_codes` (and, for
    l2s, `visual_features`: the engine's options name the visual checkpoint).
    root: cache folder (created).
    hits / misses count every lookup; visual_hits / visual_misses the visual ones among them.
    """

    def __init__(self, engine, root: Path) -> None:
        self.engine = engine
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._identity: str | None = None
        self._visual_identity: str | None = None
        self._sha: dict[Path, str] = {}
        self.hits = 0
        self.misses = 0
        self.visual_hits = 0
        self.visual_misses = 0

    @property
    def identity(self) -> str:
        """Hash naming the SSL model and semantic codec (their files and configs)."""
        if self._identity is None:
            store = self.engine.store
            ident = {}
            parts = (("w2v-bert-2.0", ("weights", "config")), ("maskgct-codecs", ("semantic_codec",)))
            for name, roles in parts:
                card = get_card(name)
                ident[name] = {
                    "files": [_file_identity(store.path(card, r)) for r in roles],
                    "config": store.config(card),
                }
            blob = json.dumps(ident, sort_keys=True).encode()
            self._identity = hashlib.sha256(blob).hexdigest()
        return self._identity

    @property
    def visual_identity(self) -> str:
        """Hash naming the visual encoder: its checkpoint and the model.json beside it."""
        if self._visual_identity is None:
            pth = getattr(self.engine.options, "visual_checkpoint", None)
            if pth is None:
                raise InputError("l2s training needs the visual encoder checkpoint (--visual-checkpoint)")
            pth = Path(pth)
            if not pth.is_file():
                raise InputError(f"{pth}: visual encoder checkpoint not found")
            files = [pth] + [pth.with_suffix(".json")] * pth.with_suffix(".json").is_file()
            ident = {"visual": [_file_identity(f) for f in files], "frontend": "mouth-rois-25fps"}
            blob = json.dumps(ident, sort_keys=True).encode()
            self._visual_identity = hashlib.sha256(blob).hexdigest()
        return self._visual_identity

    def _key(self, kind: str, files: Sequence[Path | None], identity: str | None = None) -> str:
        parts = [identity or self.identity, kind]
        for f in files:
            if f is None:  # an absent optional file (l2s landmarks)
                parts.append("-")
                continue
            f = Path(f).resolve()
            if f not in self._sha:
                self._sha[f] = _file_sha(f)
            parts.append(self._sha[f])
        return hashlib.sha256("/".join(parts).encode()).hexdigest()

    def _compute_ssl(self, files: Sequence[Path]) -> torch.Tensor:
        tok = self.engine.tokenizers
        wavs = []
        for f in files:
            try:
                wavs.append(tok.load16(Path(f)))
            except InputError:
                raise
            except Exception as exc:  # soundfile/audioread errors: name the file
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(f"{f}: cannot read audio ({first})") from None
        wav = np.concatenate(wavs)
        if len(wav) == 0:
            raise InputError(f"{files[-1]}: empty audio")
        return tok.ssl_features(wav, what=str(files[-1])).float().cpu().clone()

    def _get(self, kind: str, files: Sequence[Path]) -> torch.Tensor:
        path = self.root / f"{self._key(kind, files)}.safetensors"
        if path.is_file():
            self.hits += 1
            return load_file(str(path))["x"]
        self.misses += 1
        feat = self._compute_ssl(files)
        if kind == "ssl":
            x = feat
        else:
            x = self.engine.tokenizers.semantic_codes(feat).to(torch.long).cpu().clone()
        _write_entry(path, x)
        return x

    def ssl(self, files: Sequence[Path]) -> torch.Tensor:
        """(T, D) float32 SSL features of the files' 16 kHz waveforms, concatenated."""
        return self._get("ssl", files)

    def codes(self, files: Sequence[Path]) -> torch.Tensor:
        """(T,) int64 semantic codes of the files' concatenated waveforms."""
        return self._get("codes", files)

    def visual(self, video: Path, landmarks: Path | None = None) -> torch.Tensor:
        """(T_v, D) float32 visual-encoder features of a video's mouth crops at 25 fps."""
        path = self.root / f"{self._key('visual', [video, landmarks], self.visual_identity)}.safetensors"
        if path.is_file():
            self.hits += 1
            self.visual_hits += 1
            return load_file(str(path))["x"]
        self.misses += 1
        self.visual_misses += 1
        x = self.engine.tokenizers.visual_features(Path(video), landmarks).float().cpu().clone()
        _write_entry(path, x)
        return x


def finetune_item(cache: FeatureCache, ex: Example) -> Item:
    """x0 = [codes(prompt) ; codes(target)], cond = SSL([prompt ; input]), trimmed to one length."""
    prompt = cache.codes([ex.prompt]) if ex.prompt is not None else torch.zeros(0, dtype=torch.long)
    x0 = torch.cat([prompt, cache.codes([ex.target])])
    cond = cache.ssl([ex.prompt, ex.input] if ex.prompt is not None else [ex.input])
    n = min(len(x0), len(cond))
    if n <= len(prompt):
        raise InputError(f"{ex.input}: too short to leave a target frame after the prompt")
    return Item(x0=x0[:n], prompt_len=len(prompt), cond=cond[:n])


def l2s_item(cache: FeatureCache, ex: Example) -> Item:
    """x0 = [codes(prompt) ; codes(target)], cond = [0 (Lp rows) ; up2(visual(video))] (module doc)."""
    from metis_cli.nn.stage1 import l2s_condition

    prompt = cache.codes([ex.prompt]) if ex.prompt is not None else torch.zeros(0, dtype=torch.long)
    target = cache.codes([ex.target])
    up = l2s_condition(cache.visual(ex.input, ex.landmarks), 0)  # (2 T_v, D) at 50 Hz
    n = min(len(target), len(up))
    if abs(len(target) - len(up)) > max(L2S_MAX_MISMATCH, 0.05 * n):
        raise InputError(
            f"{ex.target}: {len(target)} frames of speech but {len(up)} of video at 50 Hz; "
            "the video and its speech must cover the same time"
        )
    if n == 0:
        raise InputError(f"{ex.target}: no target frame")
    cond = torch.cat([torch.zeros(len(prompt), up.shape[1]), up[:n]])
    return Item(x0=torch.cat([prompt, target[:n]]), prompt_len=len(prompt), cond=cond)


def tts_item(cache: FeatureCache, ex: Example) -> Item:
    """x0 = [codes(prompt) ; codes(audio)], phones = g2p(prompt_text) ++ g2p(text)."""
    from metis_cli.text import tts_phone_ids

    parts = [ex.prompt, ex.target] if ex.prompt is not None else [ex.target]
    x0 = torch.cat([cache.codes([p]) for p in parts])
    prompt_ids, text_ids = (
        tts_phone_ids(ex.prompt_text or "", ex.text or "", ex.prompt_language, ex.language)
        if ex.prompt is not None
        else ([], _phones(ex.text or "", ex.language))
    )
    phones = torch.tensor(list(prompt_ids) + list(text_ids), dtype=torch.long)
    if len(phones) == 0:
        raise InputError(f"{ex.target}: the text gives no phones")
    return Item(x0=x0, prompt_len=0, phones=phones)


def _phones(text: str, language: str | None) -> list[int]:
    from metis_cli.text import detect_language, g2p

    return list(g2p(text, language or detect_language(text))[1])


def build_items(
    cache: FeatureCache,
    examples: Sequence[Example],
    task: str,
    on_skip: Callable[[str], None],
) -> list[Item]:
    """Items of `examples`; an example whose audio/text cannot be used is reported and skipped."""
    make = {"tts": tts_item, "l2s": l2s_item}.get(task, finetune_item)
    items = []
    for ex in examples:
        try:
            items.append(make(cache, ex))
        except Exception as exc:  # unreadable audio, too short, g2p failure: skip this line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            on_skip(f"{ex.where}: {first}")
    return items


def pretrain_item(cache: FeatureCache, path: Path) -> Item:
    """x0 = semantic codes of one file; prompt lengths are drawn during training."""
    return Item(x0=cache.codes([path]), prompt_len=0)
