"""Keyframe (image) tokenizers: an image to a variable number of discrete visual codes (the
LLM's keyframe tokens) or continuous features, and codes back to a keyframe de-tokenizer's
condition. Chosen by ``keyframe_tokenizer=<option>`` (``conf/keyframe_tokenizer/``); the arch
``<arch>`` lives in ``<arch>.py`` here with its config in ``<arch>_config.py``
(``registry.py``: ``build_keyframe_tokenizer(cfg.keyframe_tokenizer)``,
``load_keyframe_tokenizer(folder)``).

* ``lavit`` -- Video-LaVIT's dynamic visual tokenizer (224 x 224 -> up to 256 codes of a
  16384-entry codebook) and its codes -> embeddings decoder, loading the released
  ``visual_tokenizer/`` files strictly; ``visual_weight.py`` splits and writes the LLM
  folder's ``visual_weight.bin``.
"""
