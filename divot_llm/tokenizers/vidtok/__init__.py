"""VidTok v1.0 (microsoft/VidTok) as a video tokenizer: our implementation of its causal
and non-causal encoder/decoder with KL or FSQ bottleneck, loading the released weights.

``VidTokAutoencoder`` is the trainable model (``stage=vidtok``); ``VidTokTokenizer`` the
frozen tokenizer registered as arch ``vidtok`` (``video_tokenizer=vidtok_*``).
"""

from divot_llm.tokenizers.vidtok.autoencoder import VidTokAutoencoder, load_vidtok_weights
from divot_llm.tokenizers.vidtok.config import VidTokConfig
from divot_llm.tokenizers.vidtok.tokenizer import VidTokTokenizer

__all__ = ["VidTokAutoencoder", "VidTokConfig", "VidTokTokenizer", "load_vidtok_weights"]
