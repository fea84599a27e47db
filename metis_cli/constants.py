"""Constants fixed by the official code (spec §6.0, §1.1, §2, §4): in no config file.

Every other dimension comes from a model card's architecture config.
"""

# --- audio -------------------------------------------------------------------------------
SSL_SAMPLE_RATE = 16_000  # w2v-BERT 2.0 input rate (Hz)
CODEC_SAMPLE_RATE = 24_000  # acoustic codec input/output rate (Hz)
HOP_SAMPLES = 480  # acoustic codec hop at 24 kHz (20 ms)
FRAME_RATE = 50  # semantic and acoustic tokens per second
SSL_MIN_SAMPLES = 400  # shortest 16 kHz input that yields one fbank frame (25 ms)
CODEC_MIN_SAMPLES = 467  # shortest 24 kHz prompt that yields one acoustic frame
VIDEO_FPS = 25  # frame rate the L2S visual encoder was trained on

# --- SSL features --------------------------------------------------------------------------
SSL_LAYER = 17  # hidden_states index used (output of the 17th conformer layer)
SSL_NUM_LAYERS_OFFICIAL = 24  # layers in w2v-BERT 2.0; one hidden RNG draw per layer (spec §12)

# --- acoustic codes --------------------------------------------------------------------------
NUM_ACOUSTIC_CODEBOOKS = 12  # codebooks in the Metis glue (code layout (B, T, 12))

# --- transformers ----------------------------------------------------------------------------
PHONE_VOCAB_ROWS = 1024  # rows of phone_emb
PHONE_PAD_ID = 1023  # padding row of phone_emb
MLP_RATIO = 4  # MLP / adapter inner width = 4 * hidden
RMS_NORM_EPS = 1e-6  # adaptive RMSNorm epsilon
CODEC_LAYER_NORM_EPS = 1e-6  # LayerNorm epsilon in the codecs' ConvNeXt blocks
ROPE_BASE = 10_000.0  # rotary embedding base
TIME_EMBED_MAX_PERIOD = 10_000.0  # sinusoidal diffusion-time embedding base

# --- sampling ------------------------------------------------------------------------------
GUMBEL_EPS = 1e-10  # eps inside -log(-log(u + eps) + eps)
SINGLE_STEP_TEMPERATURE = 0.2  # temperature when a layer/stage has exactly one step
MIN_TEMPERATURE = 1e-3

# Metis was trained on 3-30 s clips: prompts, chunks and generated pieces stay in this range.
TRAIN_MIN_SECONDS = 3.0
TRAIN_MAX_SECONDS = 30.0
