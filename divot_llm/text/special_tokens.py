"""Every special-token string Divot uses, in the id order of the release.

The release tokenizer (``cvlm_mistral_instruct_tokenizer``) is Mistral's 32000-piece
SentencePiece model plus 262 added tokens with ids 32000..32261: six structural
markers followed by 256 frame tokens (divot-reference.md §5.2). The frame tokens do two
jobs: in comprehension their embeddings are overwritten by projected video features;
in generation their (learnable) input embeddings are the output queries.

This module is the one place that knows these strings; ``data/`` and ``model/`` import
them from here.
"""

from __future__ import annotations

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
DEFAULT_PAD = UNK  # the release's pad token is most likely <unk> (id 0), as in SEED-X

IMG_START = "<img>"
IMG_END = "</img>"
VID_START = "<vid>"
VID_END = "</vid>"
FRAME_START = "<frame>"  # opens one clip's run of frame tokens
FRAME_END = "</frame>"
FRAME_TOKEN_FORMAT = "<frame_{:05d}>"
NUM_FRAME_TOKENS = 256  # <frame_00000> .. <frame_00255>; a clip uses the first N of them

STRUCTURAL_TOKENS: tuple[str, ...] = (IMG_START, IMG_END, VID_START, VID_END, FRAME_START, FRAME_END)


def frame_token(index: int) -> str:
    """The ``index``-th frame token, e.g. ``frame_token(3) == "<frame_00003>"``."""
    if not 0 <= index < NUM_FRAME_TOKENS:
        raise ValueError(f"frame token index {index} outside [0, {NUM_FRAME_TOKENS})")
    return FRAME_TOKEN_FORMAT.format(index)


# Ids are assigned in this order after the base vocabulary: 32000 = <img> ... 32005 =
# </frame>, 32006 = <frame_00000> ... 32261 = <frame_00255>. The structural-first order is
# inferred (the release's special_tokens_map lists the six markers); a release folder's own
# added_tokens.json always wins when a tokenizer is loaded from one.
DIVOT_ADDED_TOKENS: tuple[str, ...] = STRUCTURAL_TOKENS + tuple(
    frame_token(i) for i in range(NUM_FRAME_TOKENS)
)
NUM_ADDED_TOKENS = len(DIVOT_ADDED_TOKENS)  # 262
