"""Video-LaVIT's text tokenizer: a LLaMA SentencePiece model alone.

LaVIT's visual and motion ids are not text: they sit above the base vocabulary
(``LaVITVocab``) and only templates put them in a sequence, so this tokenizer knows none of
them and ``encode_text`` can never produce one. A released ``language_model/`` folder
ships ``tokenizer.model`` (read by upstream as a slow ``LlamaTokenizer``, bos added, eos
not); ``save_pretrained`` writes the same files, so upstream's loader reads ours.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from divot_llm.text.tokenizer import (
    SP_MODEL_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    bundled_sp_model,
)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class LaVITTextTokenizer:
    """SentencePiece text with LLaMA's bos / eos / unk.

    Args:
        sp_model_file: the ``tokenizer.model`` file.

    Attributes:
        base_vocab_size: the SentencePiece pieces: ``LaVITVocab.text_size``.
        pad_id: pads batches (unk, never supervised nor attended).
    """

    def __init__(self, sp_model_file: str | os.PathLike):
        self.sp_model_file = Path(sp_model_file)
        self._sp = spm.SentencePieceProcessor(model_file=str(self.sp_model_file))
        self.base_vocab_size = self._sp.get_piece_size()
        self.bos_id, self.eos_id = self._sp.piece_to_id(BOS), self._sp.piece_to_id(EOS)
        self.unk_id = self._sp.piece_to_id(UNK)
        self.pad_id = self.unk_id

    def __getstate__(self) -> dict:  # dataloader workers get the file, not the C++ object
        return {"sp_model_file": self.sp_model_file}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["sp_model_file"])

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> LaVITTextTokenizer:
        """From a ``tokenizer.model`` file or a folder holding one (a ``language_model/``)."""
        path = Path(path)
        return cls(path / SP_MODEL_FILE if path.is_dir() else path)

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """``tokenizer.model`` + the slow ``LlamaTokenizer``'s config files into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.sp_model_file, out / SP_MODEL_FILE)
        specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
        config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                  "legacy": True, **specials}  # fmt: skip
        (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (out / SPECIAL_TOKENS_MAP_FILE).write_text(json.dumps(specials, indent=2) + "\n")
        return out

    def encode_text(self, text: str) -> list[int]:
        """Ids of text (no bos / eos)."""
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; bos / eos / unk and ids beyond the text vocabulary are dropped."""
        dropped = {self.bos_id, self.eos_id, self.unk_id}
        return self._sp.decode(
            [i for i in map(int, ids) if i not in dropped and 0 <= i < self.base_vocab_size]
        )


def load_lavit_text_tokenizer(path: str | os.PathLike | None) -> LaVITTextTokenizer:
    """The configured text tokenizer (``model.tokenizer_path``: a ``tokenizer.model`` or a
    ``language_model/`` folder); ``None``: the Mistral v0.1 ``tokenizer.model`` bundled with
    mistral-common (32000 pieces, LLaMA's size: the tiny configs)."""
    return LaVITTextTokenizer.from_pretrained(bundled_sp_model() if path is None else path)
