"""Audio ↔ tokens: wav → SSL features → semantic codes; wav ↔ acoustic codes.

`Tokenizers` is what the task functions see. It gets its models from a component getter
(the engine decides what is resident), so tasks never load anything themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metis_cli.constants import CODEC_MIN_SAMPLES, CODEC_SAMPLE_RATE, NUM_ACOUSTIC_CODEBOOKS, SSL_SAMPLE_RATE
from metis_cli.core.prompt_cache import PromptCache
from metis_cli.errors import AudioError, MissingModelError
from metis_cli.media import audio


class Tokenizers:
    """Tokenisation services for one engine.

    get: component getter, e.g. get("ssl"), get("semantic_codec"), get("acoustic_encoder").
    device: where codes and features are returned.
    """

    num_codebooks = NUM_ACOUSTIC_CODEBOOKS
    ssl_rate = SSL_SAMPLE_RATE
    codec_rate = CODEC_SAMPLE_RATE

    def __init__(
        self, get: Callable[[str], Any], device: torch.device, visual: Callable | None = None
    ) -> None:
        self._get = get
        self.device = device
        self._visual = visual
        self.prompt_cache: PromptCache | None = None  # speaker prompts encoded once (core.prompt_cache)
        self.cache_scope = str(device)  # what besides the content decides a prompt's codes

    # -- audio ----------------------------------------------------------------------------------
    def load16(self, path: Path) -> np.ndarray:
        """(N,) float32 at 16 kHz, as librosa.load(path, sr=16000)."""
        return audio.load_audio(path, SSL_SAMPLE_RATE)

    def load24(self, path: Path) -> np.ndarray:
        """(N,) float32 at 24 kHz, as librosa.load(path, sr=24000)."""
        return audio.load_audio(path, CODEC_SAMPLE_RATE)

    # -- semantic ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def ssl_features(self, wav16: np.ndarray, what: str = "input") -> torch.Tensor:
        """(T, D) float32 normalised layer-17 w2v-BERT features (50 frames/s)."""
        feat = self._get("ssl")(wav16, name=what)  # (1, T, D)
        return feat[0].to(self.device, torch.float32)

    @torch.inference_mode()
    def semantic_codes(self, feat: torch.Tensor) -> torch.Tensor:
        """(T,) int64 semantic codes of (T, D) features."""
        codec = self._get("semantic_codec")
        p = next(codec.parameters())
        codes, _ = codec.quantize(feat[None].to(p.device, p.dtype))
        return codes[0].to(self.device)

    # -- acoustic ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def acoustic_codes(self, wav24: np.ndarray, what: str = "input") -> torch.Tensor:
        """(T, 12) int64 acoustic codes of a 24 kHz waveform."""
        from metis_cli.nn.acoustic_codec import wav_to_codes

        if len(wav24) < CODEC_MIN_SAMPLES:
            raise AudioError(
                f"{what}: too short for an acoustic frame"
                f" ({len(wav24)} samples at 24 kHz, need {CODEC_MIN_SAMPLES})"
            )
        enc, dec = self._get("acoustic_encoder"), self._get("acoustic_decoder")
        p = next(enc.parameters())
        wav = torch.from_numpy(wav24).to(p.device, p.dtype)[None]
        return wav_to_codes(enc, dec, wav)[0].to(self.device)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """(T, 12) acoustic codes → (T*480,) float32 waveform at 24 kHz."""
        from metis_cli.nn.acoustic_codec import codes_to_wav

        dec = self._get("acoustic_decoder")
        p = next(dec.parameters())
        wav = codes_to_wav(dec, codes[None].to(p.device))  # (1, N)
        return wav[0].float().cpu().numpy()

    # -- video ---------------------------------------------------------------------------------------
    def visual_features(self, path: Path, landmarks: Path | None = None) -> torch.Tensor:
        """(T_v, D) visual features at 25 fps of a video file (optional landmarks file)."""
        if self._visual is None:
            raise MissingModelError("this pipeline has no visual encoder (L2S needs --visual-checkpoint)")
        return self._visual(path, landmarks)
