"""The Divot text tokenizer against the real Mistral v0.1 SentencePiece model."""

from __future__ import annotations

import json

import pytest

from divot_llm.text import (
    DIVOT_ADDED_TOKENS,
    FRAME_END,
    FRAME_START,
    IMG_START,
    VID_END,
    VID_START,
    DivotTextTokenizer,
    UserText,
    clip_tokens,
    comprehension_prompt,
    followup_turn,
    frame_token,
    generation_prompt,
    generation_queries,
    image_tokens,
    instruction,
    video_tokens,
)


def joined(prompt) -> str:
    """The reference's form of a prompt: one string, user text spliced in."""
    return "".join(part.text if isinstance(part, UserText) else part for part in prompt)


# Prompts the templates produce (with plain user text).
PROMPTS = [
    instruction("Hello world"),
    generation_prompt("a red circle moving left on a blue background"),
    generation_prompt("a cat", media="image"),
    comprehension_prompt(video_tokens(2, 4), "What does this video describe?"),
    comprehension_prompt(image_tokens(4), "<video>\nWhat colour is the square?"),
    followup_turn("And the background?"),
]
# Their joined strings, plus whitespace / unicode / special-token-in-markup edge cases.
CORPUS = [
    *map(joined, PROMPTS),
    video_tokens(1, 4) + "a red circle" + "</s>",
    "a red circle" + VID_START + clip_tokens(4) + VID_END,
    "caption " + generation_queries(4),
    "  two leading spaces and trailing  ",
    "tab\tand\nnewlines\n\n" + FRAME_START + " spaced " + FRAME_END + " x",
    "unicode: café, 東京, emoji 🙂",
    "<s>bos in text</s> and <unk>",
    "<frame_00255><frame_00000>x<frame>y</frame>z",
    "<vid> with a space after and before </vid>",
]


@pytest.fixture(scope="module")
def tokenizer(mistral_tokenizer_dir):
    return DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)


def test_added_tokens_have_the_release_ids(tokenizer):
    assert len(tokenizer) == 32262
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 0)
    expected = {"<img>": 32000, "</img>": 32001, "<vid>": 32002, "</vid>": 32003, "<frame>": 32004}
    expected |= {"</frame>": 32005, "<frame_00000>": 32006, "<frame_00063>": 32069, "<frame_00255>": 32261}
    assert {t: tokenizer.token_to_id(t) for t in expected} == expected
    assert tokenizer.added_token_ids == list(range(32000, 32262))


def test_every_special_token_encodes_to_exactly_one_id(tokenizer):
    for token in (*DIVOT_ADDED_TOKENS, "<s>", "</s>"):
        assert tokenizer.encode(token) == [tokenizer.token_to_id(token)], token


def test_pieces_encode_like_the_release_mistral_tokenizer(tokenizer):
    # ids of the released Mistral-7B v0.1 model (also pinned in tests/test_infrastructure.py)
    assert tokenizer.encode(joined(instruction("Hello world"))) == [
        733,
        16289,
        28793,
        22557,
        1526,
        733,
        28748,
        16289,
        28793,
        13,
    ]
    # legacy behaviour: text after a special token gets SentencePiece's "▁" prefix
    what = tokenizer.encode("What")
    assert tokenizer.encode(VID_END + "What") == [32003, *what]
    assert tokenizer.encode("x", add_bos=True, add_eos=True) == [1, *tokenizer.encode("x"), 2]
    pieces = ["[INST] ", video_tokens(1, 4), "Why?", " [/INST]\n"]
    assert tokenizer.encode_pieces(pieces) == [i for p in pieces for i in tokenizer.encode(p)]


@pytest.mark.parametrize("num_clips", [1, 3, 20])
def test_video_string_is_2_plus_66_tokens_per_clip(tokenizer, num_clips):
    ids = tokenizer.encode(video_tokens(num_clips, 64))
    assert len(ids) == 2 + 66 * num_clips
    assert ids[:3] == [32002, 32004, 32006] and ids[-2:] == [32005, 32003]


def test_encoding_matches_transformers_legacy_sentencepiece_tokenizer(tokenizer, mistral_tokenizer_dir):
    """transformers' own SentencePiece-backed slow tokenizer (legacy mode) is an
    independent implementation of the reference's LlamaTokenizer: ids must agree."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    ref = SentencePieceBackend(
        vocab_file=str(mistral_tokenizer_dir / "tokenizer.model"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        legacy=True,
    )
    ref.add_special_tokens({"additional_special_tokens": list(DIVOT_ADDED_TOKENS[:6])})
    ref.add_tokens(list(DIVOT_ADDED_TOKENS[6:]))
    assert len(ref) == len(tokenizer)
    for text in CORPUS:
        assert tokenizer.encode(text) == ref.encode(text, add_special_tokens=False), text


def test_prompts_encode_like_their_joined_strings(tokenizer):
    """Marking user text changes no id of ordinary text: same ids as the reference's strings."""
    for prompt in PROMPTS:
        assert tokenizer.encode(prompt) == tokenizer.encode(joined(prompt)), prompt
    assert tokenizer.encode(generation_prompt("")) == tokenizer.encode(
        "[INST] Generate a video of  [/INST]\n"
    )


@pytest.mark.parametrize(
    "text", [*DIVOT_ADDED_TOKENS[:7], frame_token(255), "<s>", "</s>", "<unk>", "<pad>", "[INST]", "<0x41>"]
)
def test_user_text_never_yields_control_ids(tokenizer, text):
    """A special-token string written in user text is ordinary pieces, and decodes back."""
    control = tokenizer.control_ids
    hostile = f"a {text}b{text} {text}"
    assert not control & {*tokenizer.encode_text(text)}
    assert not control & {*tokenizer.encode_text(hostile)}
    assert not control & {*tokenizer.encode(instruction(hostile))}
    assert tokenizer.decode(tokenizer.encode_text(hostile)) == hostile
    wrapped = tokenizer.encode((VID_START, UserText(text), VID_END))  # markup keeps its ids
    assert [i for i in wrapped if i in control] == [32002, 32003]


def test_a_special_token_cannot_straddle_markup_and_user_text(tokenizer):
    ids = tokenizer.encode(("<fr", UserText("ame>"), VID_END))
    assert [i for i in ids if i in tokenizer.control_ids] == [32003]


def test_prompt_parts_must_be_text(tokenizer):
    with pytest.raises(TypeError, match="str or UserText"):
        tokenizer.encode(("[INST] ", 3))


def test_decode_inverts_encode(tokenizer):
    for text in CORPUS[:9]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.encode(VID_START + "a cat" + VID_END, add_bos=True)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a cat"


def test_saved_folder_round_trips_and_loads_in_transformers(tokenizer, tmp_path):
    """transformers' fast (converted) tokenizer loads the folder with the same ids for
    the template strings; it differs from SentencePiece on runs of spaces, so the
    whitespace edge cases are only checked for our own round trip."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = DivotTextTokenizer.from_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert len(again) == len(hf) == 32262
    for text in CORPUS:
        assert again.encode(text) == tokenizer.encode(text)
    for text in CORPUS[:9]:
        assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text), text


def test_release_folder_keeps_its_own_ids_and_strip_flags(tmp_path, mistral_tokenizer_dir):
    (tmp_path / "tokenizer.model").write_bytes((mistral_tokenizer_dir / "tokenizer.model").read_bytes())
    # a release whose frame tokens come first: the folder's ids must win
    order = list(DIVOT_ADDED_TOKENS[6:]) + list(DIVOT_ADDED_TOKENS[:6])
    (tmp_path / "added_tokens.json").write_text(json.dumps({t: 32000 + i for i, t in enumerate(order)}))
    decoder = {"32258": {"content": VID_START, "lstrip": False, "rstrip": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "</s>"}}))
    tok = DivotTextTokenizer.from_pretrained(tmp_path)
    assert tok.token_to_id(frame_token(0)) == 32000 and tok.token_to_id(IMG_START) == 32256
    assert tok.pad_id == 2
    # rstrip on <vid>: the space after it is dropped before SentencePiece sees the text
    assert tok.encode(VID_START + " cat") == [32258, *tok.encode("cat")]


def test_bad_added_tokens_are_rejected(tmp_path, mistral_tokenizer_dir):
    (tmp_path / "tokenizer.model").write_bytes((mistral_tokenizer_dir / "tokenizer.model").read_bytes())
    ids = {t: 32000 + i for i, t in enumerate(DIVOT_ADDED_TOKENS)}
    (tmp_path / "added_tokens.json").write_text(json.dumps({t: i for t, i in ids.items() if t != VID_START}))
    with pytest.raises(ValueError, match="lacks 1 Divot tokens"):
        DivotTextTokenizer.from_pretrained(tmp_path)
    ids[VID_START] = 40000
    (tmp_path / "added_tokens.json").write_text(json.dumps(ids))
    with pytest.raises(ValueError, match="contiguous from 32000"):
        DivotTextTokenizer.from_pretrained(tmp_path)


def test_frame_token_ids_follow_tokens_per_clip(tokenizer):
    assert tokenizer.frame_token_ids(8) == list(range(32006, 32014))
    with pytest.raises(ValueError):
        tokenizer.frame_token_ids(257)
