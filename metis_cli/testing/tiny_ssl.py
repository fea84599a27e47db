"""A tiny random w2v-BERT 2.0 model in the transformers layout, for tests (no downloads).

The bundle has the same structure as ``facebook/w2v-bert-2.0`` (relative-key attention,
conformer convolution, 160-dim stacked fbank input, the official feature-extractor config)
but a very small width, so writing and running it takes milliseconds. ``metis_stats.safetensors``
next to the model holds random normalisation stats of the tiny width (keys ``mean``, ``var``),
which :meth:`metis_cli.core.ssl.SSLFeatureExtractor.from_dir` picks up.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from metis_cli.constants import SSL_LAYER, SSL_SAMPLE_RATE

STATS_FILENAME = "metis_stats.safetensors"

# The official facebook/w2v-bert-2.0 feature-extractor settings (spec §2).
OFFICIAL_FEATURE_EXTRACTOR = {
    "feature_size": 80,
    "num_mel_bins": 80,
    "stride": 2,
    "padding_value": 1.0,
    "sampling_rate": SSL_SAMPLE_RATE,
    "return_attention_mask": True,
}


def tiny_w2v_bert_config(hidden_size: int = 16, num_layers: int = 18):
    """A ``Wav2Vec2BertConfig`` shaped like w2v-BERT 2.0 but tiny (2 heads, 2x FFN, kernel 3)."""
    from transformers import Wav2Vec2BertConfig

    if num_layers < SSL_LAYER:
        raise ValueError(f"tiny w2v-BERT needs at least {SSL_LAYER} layers, got {num_layers}")
    return Wav2Vec2BertConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        feature_projection_input_dim=160,  # 2 stacked 80-bin fbank frames
        output_hidden_size=hidden_size,
        conv_depthwise_kernel_size=3,
        position_embeddings_type="relative_key",  # as in the official config
        left_max_position_embeddings=64,
        right_max_position_embeddings=8,
        add_adapter=False,
        use_intermediate_ffn_before_adapter=False,
        vocab_size=None,
    )


def write_tiny_w2v_bert(
    directory: str | os.PathLike, hidden_size: int = 16, num_layers: int = 18, seed: int = 0
) -> Path:
    """Write a random tiny w2v-BERT model, its feature-extractor config and stats to ``directory``.

    Files: ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` (all via
    ``save_pretrained``) and ``metis_stats.safetensors`` (``mean`` ~ N(0, 0.5²), ``var`` in
    [0.5, 2), both float32 ``(hidden_size,)``). Deterministic in ``seed``; the global RNG state is
    left as it was.

    Returns:
        The directory as a ``Path``.
    """
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_w2v_bert_config(hidden_size, num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2BertModel(config).eval()
    model.save_pretrained(directory)
    SeamlessM4TFeatureExtractor(**OFFICIAL_FEATURE_EXTRACTOR).save_pretrained(directory)

    g = torch.Generator().manual_seed(seed + 1)
    mean = torch.randn(hidden_size, generator=g) * 0.5
    var = torch.rand(hidden_size, generator=g) * 1.5 + 0.5
    save_file({"mean": mean.contiguous(), "var": var.contiguous()}, str(directory / STATS_FILENAME))
    return directory
