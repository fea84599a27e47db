"""Official full-size config blocks (spec §3, §4.1, §4.3; key names as in the official JSON).

To be moved into the JSON model cards; until then the manifest tests build from these.
"""

from __future__ import annotations

from typing import Any

FULL_SIZE_CONFIGS: dict[str, dict[str, Any]] = {
    # base.json model.semantic_codec (spec §3)
    "semantic_codec": {
        "codebook_size": 8192,
        "hidden_size": 1024,
        "codebook_dim": 8,
        "vocos_dim": 384,
        "vocos_intermediate_dim": 2048,
        "vocos_num_layers": 12,
    },
    # base.json model.acoustic_codec (spec §4.1, §4.2, §4.3; golden acoustic_codec/config.json)
    "acoustic_codec": {
        "encoder": {
            "d_model": 96,
            "up_ratios": [3, 4, 5, 8],
            "out_channels": 256,
            "use_tanh": False,
        },
        "decoder": {
            "in_channel": 256,  # ignored by the official decoder (reads in_channels, default 256)
            "upsample_initial_channel": 1536,  # unused with Vocos
            "up_ratios": [8, 5, 4, 3],  # unused with Vocos
            "num_quantizers": 12,
            "codebook_size": 1024,
            "codebook_dim": 8,
            "quantizer_type": "fvq",
            "quantizer_dropout": 0.5,
            "commitment": 0.25,
            "codebook_loss_weight": 1.0,
            "use_l2_normlize": True,
            "codebook_type": "euclidean",
            "kmeans_init": False,
            "kmeans_iters": 10,
            "decay": 0.8,
            "eps": 0.5,
            "threshold_ema_dead_code": 2,
            "weight_init": False,
            "use_vocos": True,
            "vocos_dim": 512,
            "vocos_intermediate_dim": 4096,
            "vocos_num_layers": 30,
            "n_fft": 1920,
            "hop_size": 480,
            "padding": "same",
        },
    },
    # base.json / ft.json model.t2s_model (spec §1.3 table); tts.json adds use_phone_cond true,
    # l2s.json sets cond_dim 768, omni.json (unmerged PR #405) = tts.json
    "t2s_model": {
        "hidden_size": 1536,
        "num_layers": 16,
        "num_heads": 16,
        "cfg_scale": 0.15,
        "cond_codebook_size": 8192,
        "cond_dim": 1024,
        "use_phone_cond": False,
    },
    # base.json model.s2a_model_1layer / s2a_model_full (spec §7)
    "s2a_model_1layer": {
        "num_quantizer": 1,
        "hidden_size": 1024,
        "num_layers": 16,
        "num_heads": 16,
        "codebook_size": 1024,
        "cfg_scale": 0.15,
        "mask_layer_schedule": "linear",
        "cond_codebook_size": 8192,
        "cond_dim": 1024,
        "predict_layer_1": True,
    },
    "s2a_model_full": {
        "num_quantizer": 12,
        "hidden_size": 1024,
        "num_layers": 16,
        "num_heads": 16,
        "codebook_size": 1024,
        "cfg_scale": 0.15,
        "mask_layer_schedule": "linear",
        "cond_codebook_size": 8192,
        "cond_dim": 1024,
        "predict_layer_1": False,
    },
}
