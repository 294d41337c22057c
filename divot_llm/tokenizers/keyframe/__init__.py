"""Keyframe (image) tokenizers: Video-LaVIT's dynamic visual tokenizer (``lavit``)."""
