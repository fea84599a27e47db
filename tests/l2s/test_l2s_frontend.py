"""Video file -> mouth crops -> tiny visual encoder checkpoint -> features (no detector needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metis_cli.assets.visual_checkpoint import load_visual_encoder, save_tiny_visual_checkpoint
from metis_cli.errors import VideoError
from metis_cli.media.video import load_mouth_rois, visual_features
from metis_cli.nn.visual import tiny_config
from tests.l2s.synth import face_video, write_video


def test_video_to_features_end_to_end(tmp_path: Path) -> None:
    n = 15  # 0.5 s at 30 fps -> 12 frames at 25 fps -> 24 semantic tokens downstream
    frames, marks = face_video(n, 1.2, -5.0, [(10.0 + t, 5.0) for t in range(n)])
    video = write_video(tmp_path / "talk.mkv", frames, 30)
    np.save(tmp_path / "talk.npy", marks)
    pth, _ = save_tiny_visual_checkpoint(tmp_path / "vis", seed=0)

    encoder = load_visual_encoder(pth)
    rois = load_mouth_rois(video, landmarks=tmp_path / "talk.npy")
    assert rois.shape == (12, 88, 88)
    feats = visual_features(encoder, rois)
    assert feats.shape == (12, tiny_config().adim) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    # the mouth content matters: a blank clip of the same length gives other features
    blank = visual_features(encoder, np.zeros_like(rois))
    assert not torch.allclose(feats, blank, atol=1e-3)

    with pytest.raises(VideoError, match=r"talk\.mkv: no face detector available|talk\.mkv: no face found"):
        load_mouth_rois(video)  # 320x320 frames, no landmarks: needs the optional detector
