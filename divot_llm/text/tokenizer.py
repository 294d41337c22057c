"""The text tokenizer: Mistral's SentencePiece model plus Divot's 262 added tokens.

Released weights depend on exact ids, including the leading-space behaviour around
special tokens, so this reproduces the reference's tokenizer — transformers 4.36's slow
``LlamaTokenizer`` in its default *legacy* mode — directly on ``sentencepiece``:

1. split the text on added/special tokens (leftmost, longest match first);
2. honour each added token's ``lstrip``/``rstrip`` flag (strip the neighbouring text);
3. encode every remaining text chunk with SentencePiece on its own, so each chunk gets
   SentencePiece's dummy-prefix "▁" (``"</vid>What"`` -> ``</vid>``, ``▁What``).

Text is text: step 1 applies only to template strings. Text that came from data or a user
(captions, questions, answers, instructions) is wrapped in ``UserText`` and never split,
so a ``"</s>"`` or ``"<vid>"`` written in it becomes ordinary pieces (``▁</``, ``s``,
``>``); SentencePiece itself never emits its control ids (``<s>``, ``</s>``, ``<unk>``)
from text, and with Mistral's byte fallback every character has pieces of its own.

Owning these ~200 lines instead of wrapping a transformers class keeps the ids stable
across transformers releases (v5 replaced the slow tokenizers); the tests cross-check
against transformers' own SentencePiece-backed legacy tokenizer.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from divot_llm.text.special_tokens import (
    BOS,
    DEFAULT_PAD,
    DIVOT_ADDED_TOKENS,
    EOS,
    NUM_FRAME_TOKENS,
    STRUCTURAL_TOKENS,
    UNK,
    frame_token,
)

SP_MODEL_FILE = "tokenizer.model"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


@dataclass(frozen=True)
class UserText:
    """Text from data or a user (a caption, question, answer or instruction).

    Always encoded as ordinary text: special-token strings inside it never become control
    ids. Only the template strings around it may emit those.
    """

    text: str


# A prompt: template strings (markup: special-token strings become their ids) and user text.
Prompt = tuple[str | UserText, ...]


@dataclass(frozen=True)
class AddedToken:
    """One token outside the SentencePiece vocabulary and how text around it is treated."""

    content: str
    id: int
    lstrip: bool = False  # strip whitespace on the left of the token
    rstrip: bool = False  # strip whitespace on the right of the token


@dataclass
class _Chunk:
    """One run of text to encode with SentencePiece, or one special token."""

    text: str = ""
    special: AddedToken | None = None


class DivotTextTokenizer:
    """Mistral SentencePiece + Divot's added tokens, encoding like the reference.

    Args:
        sp_model_file: Path of the SentencePiece ``tokenizer.model``.
        added_tokens: The added tokens with their ids; ``None`` adds Divot's 262 tokens
            with ids ``base_vocab, base_vocab + 1, ...`` in ``DIVOT_ADDED_TOKENS`` order.
        pad_token: Token whose id pads sequences (``<unk>`` by default, as the release).

    Raises:
        ValueError: an added token collides with the base vocabulary, ids are not
            contiguous after it, or a Divot token or the pad token is missing.
    """

    def __init__(
        self,
        sp_model_file: str | os.PathLike,
        added_tokens: Sequence[AddedToken] | None = None,
        pad_token: str = DEFAULT_PAD,
    ):
        self.sp_model_file = Path(sp_model_file)
        self._sp = spm.SentencePieceProcessor(model_file=str(self.sp_model_file))
        self.base_vocab_size = self._sp.get_piece_size()
        if added_tokens is None:
            added_tokens = [AddedToken(t, self.base_vocab_size + i) for i, t in enumerate(DIVOT_ADDED_TOKENS)]
        self._added = {tok.content: tok for tok in added_tokens}
        self._check_added_ids()

        # bos/eos/unk are SentencePiece pieces, but they too are never split or prefixed.
        self._specials = dict(self._added)
        for piece in (BOS, EOS, UNK):
            self._specials.setdefault(piece, AddedToken(piece, self._sp.piece_to_id(piece)))
        self._id_to_added = {tok.id: tok.content for tok in self._added.values()}
        by_length = sorted(self._specials, key=len, reverse=True)  # longest match wins
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in by_length) + ")")

        self.pad_token = pad_token
        self.pad_id = self.token_to_id(pad_token)
        self.bos_id = self._sp.piece_to_id(BOS)
        self.eos_id = self._sp.piece_to_id(EOS)
        self.unk_id = self._sp.piece_to_id(UNK)

    def _check_added_ids(self) -> None:
        missing = [t for t in DIVOT_ADDED_TOKENS if t not in self._added]
        if missing:
            raise ValueError(f"tokenizer lacks {len(missing)} Divot tokens, e.g. {missing[:3]}")
        ids = sorted(tok.id for tok in self._added.values())
        expected = list(range(self.base_vocab_size, self.base_vocab_size + len(ids)))
        if ids != expected:
            raise ValueError(
                f"added token ids must be contiguous from {self.base_vocab_size} (the SentencePiece "
                f"vocabulary size), got ids {ids[:3]}...{ids[-3:]}"
            )

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DivotTextTokenizer:
        """Load from a folder or a bare ``tokenizer.model`` file.

        A folder in the release layout (``cvlm_mistral_instruct_tokenizer``: ``tokenizer.model``,
        ``added_tokens.json``, ``special_tokens_map.json``, ``tokenizer_config.json``) keeps its
        own ids and strip flags. A folder or file with only ``tokenizer.model`` gets Divot's
        262 tokens added in release order.

        Raises:
            FileNotFoundError: no ``tokenizer.model`` at ``path``.
        """
        path = Path(path)
        sp_file = path / SP_MODEL_FILE if path.is_dir() else path
        if not sp_file.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {sp_file}")
        if not path.is_dir():
            return cls(sp_file)
        added = _read_added_tokens(path)
        return cls(sp_file, added_tokens=added or None, pad_token=_read_pad_token(path))

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Write the release layout (loadable here and by transformers' LlamaTokenizer)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / SP_MODEL_FILE).write_bytes(self._sp.serialized_model_proto())
        added = sorted(self._added.values(), key=lambda t: t.id)
        (out / ADDED_TOKENS_FILE).write_text(json.dumps({t.content: t.id for t in added}, indent=2))
        special_map = {
            "additional_special_tokens": list(STRUCTURAL_TOKENS),
            "bos_token": BOS,
            "eos_token": EOS,
            "unk_token": UNK,
            "pad_token": self.pad_token,
        }
        (out / SPECIAL_TOKENS_MAP_FILE).write_text(json.dumps(special_map, indent=2))
        decoder = {str(self._sp.piece_to_id(p)): _token_entry(p, special=True) for p in (UNK, BOS, EOS)}
        for t in added:
            decoder[str(t.id)] = _token_entry(t.content, special=t.content in STRUCTURAL_TOKENS, tok=t)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "legacy": True,  # the reference's behaviour: every text chunk gets the "▁" prefix
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": decoder,
            **special_map,
        }
        (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return out

    # ------------------------------------------------------------------ vocabulary

    def __len__(self) -> int:
        """Full vocabulary size (32262 for the release); the LLM's embedding rows."""
        return self.base_vocab_size + len(self._added)

    def token_to_id(self, token: str) -> int:
        """Id of one token string (an added token or a SentencePiece piece).

        Raises:
            KeyError: the token is neither.
        """
        if token in self._added:
            return self._added[token].id
        piece_id = self._sp.piece_to_id(token)
        if self._sp.id_to_piece(piece_id) != token:
            raise KeyError(f"{token!r} is not a token of this tokenizer")
        return piece_id

    def id_to_token(self, token_id: int) -> str:
        if token_id in self._id_to_added:
            return self._id_to_added[token_id]
        if not 0 <= token_id < self.base_vocab_size:
            raise KeyError(f"token id {token_id} outside the vocabulary of {len(self)}")
        return self._sp.id_to_piece(token_id)

    def frame_token_ids(self, tokens_per_clip: int) -> list[int]:
        """Ids of ``<frame_00000>..<frame_{N-1}>``: one clip's placeholders / queries."""
        if not 0 < tokens_per_clip <= NUM_FRAME_TOKENS:
            raise ValueError(f"tokens_per_clip must be in [1, {NUM_FRAME_TOKENS}], got {tokens_per_clip}")
        return [self._added[frame_token(i)].id for i in range(tokens_per_clip)]

    @property
    def added_token_ids(self) -> list[int]:
        return sorted(self._id_to_added)

    @functools.cached_property
    def control_ids(self) -> frozenset[int]:
        """Ids only templates may emit: the added tokens, bos, eos, unk and pad."""
        return frozenset(self._id_to_added) | {self.bos_id, self.eos_id, self.unk_id, self.pad_id}

    # ------------------------------------------------------------------ encode / decode

    def encode(
        self, prompt: str | Sequence[str | UserText], add_bos: bool = False, add_eos: bool = False
    ) -> list[int]:
        """Ids of a template string, or of a prompt made of template strings and user text
        (the reference's ``encode(text, add_special_tokens=False)``).

        Args:
            prompt: A template string (special-token strings inside it become their single
                ids) or a sequence of template strings and ``UserText`` parts (encoded as
                ordinary text). Neighbouring text is encoded together, so a prompt gets the
                same ids as its joined string whenever its user text holds no special-token
                string. Text from data or a user never goes in as a bare ``str``: wrap it in
                ``UserText`` or use ``encode_text``.
            add_bos: Prepend ``<s>``.
            add_eos: Append ``</s>``.
        """
        ids = [self.bos_id] if add_bos else []
        for chunk in self._chunks((prompt,) if isinstance(prompt, str) else prompt):
            if chunk.special is not None:
                ids.append(chunk.special.id)
            elif chunk.text:
                ids.extend(self._sp.encode(chunk.text))
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_text(self, text: str) -> list[int]:
        """Ids of user text on its own (a caption, an answer): always ordinary text."""
        return self.encode((UserText(text),))

    def _chunks(self, parts: Sequence[str | UserText]) -> list[_Chunk]:
        """Text runs and special tokens in order, with the strip flags applied."""
        chunks: list[_Chunk] = []
        for part in parts:
            if isinstance(part, UserText):
                pieces = [part.text]  # never split: text is text
            elif isinstance(part, str):
                pieces = self._split_re.split(part)  # text at even indices, tokens at odd
            else:
                raise TypeError(f"prompt parts must be str or UserText, got {type(part).__name__}")
            for i, piece in enumerate(pieces):
                if i % 2:
                    chunks.append(_Chunk(special=self._specials[piece]))
                elif chunks and chunks[-1].special is None:
                    chunks[-1].text += piece
                else:
                    chunks.append(_Chunk(text=piece))
        # Strip flags edit the neighbouring text before it is encoded.
        for i, chunk in enumerate(chunks):
            tok = chunk.special
            if tok is None:
                continue
            if tok.rstrip and i + 1 < len(chunks) and chunks[i + 1].special is None:
                chunks[i + 1].text = chunks[i + 1].text.lstrip()
            if tok.lstrip and i > 0 and chunks[i - 1].special is None:
                chunks[i - 1].text = chunks[i - 1].text.rstrip()
        return chunks

    def encode_pieces(self, pieces: Iterable[str | Prompt]) -> list[int]:
        """Encode each piece on its own and concatenate, as the reference builds sequences."""
        return [i for piece in pieces for i in self.encode(piece)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. Runs of SentencePiece ids decode together; added tokens and
        bos/eos appear verbatim unless ``skip_special_tokens``."""
        control_ids = self.control_ids
        out: list[str] = []
        run: list[int] = []
        for token_id in (int(i) for i in ids):
            if token_id in control_ids:
                out.append(self._sp.decode(run))
                run = []
                if not skip_special_tokens:
                    out.append(self.id_to_token(token_id))
            else:
                run.append(token_id)
        out.append(self._sp.decode(run))
        return "".join(out)


def _token_entry(content: str, special: bool, tok: AddedToken | None = None) -> dict:
    return {
        "content": content,
        "lstrip": bool(tok and tok.lstrip),
        "rstrip": bool(tok and tok.rstrip),
        "normalized": False,
        "single_word": False,
        "special": special,
    }


def _read_added_tokens(folder: Path) -> list[AddedToken]:
    """Added tokens of a saved tokenizer folder: ids from ``added_tokens.json`` and/or the
    ``added_tokens_decoder`` of ``tokenizer_config.json`` (which also holds strip flags)."""
    ids: dict[str, int] = {}
    flags: dict[str, tuple[bool, bool]] = {}
    added_file = folder / ADDED_TOKENS_FILE
    if added_file.is_file():
        ids.update({k: int(v) for k, v in json.loads(added_file.read_text()).items()})
    config_file = folder / TOKENIZER_CONFIG_FILE
    if config_file.is_file():
        for token_id, entry in json.loads(config_file.read_text()).get("added_tokens_decoder", {}).items():
            if entry["content"] in (BOS, EOS, UNK):
                continue
            ids.setdefault(entry["content"], int(token_id))
            flags[entry["content"]] = (bool(entry.get("lstrip")), bool(entry.get("rstrip")))
    return [AddedToken(t, i, *flags.get(t, (False, False))) for t, i in ids.items()]


def _read_pad_token(folder: Path) -> str:
    for name in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):
        file = folder / name
        if file.is_file():
            pad = json.loads(file.read_text()).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if pad:
                return pad
    return DEFAULT_PAD


def load_text_tokenizer(path: str | os.PathLike | None) -> DivotTextTokenizer:
    """The configured tokenizer (``model.tokenizer_path``).

    ``None`` falls back to the Mistral v0.1 ``tokenizer.model`` shipped in the
    ``mistral-common`` package (a dev dependency), which is what the tiny demo and tests
    use; real runs point ``model.tokenizer_path`` at the release tokenizer folder.

    Raises:
        FileNotFoundError: ``path`` is None and mistral-common is not installed.
    """
    if path is not None:
        return DivotTextTokenizer.from_pretrained(path)
    return DivotTextTokenizer.from_pretrained(bundled_sp_model())


def bundled_sp_model() -> str:
    """The Mistral v0.1 ``tokenizer.model`` shipped in ``mistral-common`` (tests, demos).

    Raises:
        FileNotFoundError: mistral-common is not installed.
    """
    try:
        import importlib.resources

        bundled = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "model.tokenizer_path is not set and mistral-common (which ships the Mistral "
            "tokenizer.model) is not installed; set model.tokenizer_path"
        ) from err
    return str(bundled)
