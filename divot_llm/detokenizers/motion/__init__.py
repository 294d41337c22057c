"""Motion-conditioned video de-tokenizers: a keyframe plus motion back to a clip (Video-LaVIT's, ``lavit``)."""
