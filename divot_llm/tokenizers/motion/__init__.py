"""Motion tokenizers: motion-vector fields ``(B, 2, F, H, W)`` (``divot_llm.data.motion_vectors``)
to discrete motion tokens and back. Chosen by ``motion_tokenizer=<option>``
(``conf/motion_tokenizer/``); the arch ``<arch>`` lives in ``<arch>.py`` here with its config in
``<arch>_config.py`` (``registry.py``: ``build_motion_tokenizer(cfg.motion_tokenizer)``,
``load_motion_tokenizer(folder)``).

* ``lavit`` -- Video-LaVIT's motion tokenizer (24 x 20 x 36 -> 135 codes of a 1024-entry
  codebook), loading the released ``motion_tokenizer.bin`` strictly; trained by
  ``stage=motion_tokenizer``.
"""
