"""The reference's prompt strings and the sequence conventions shared by data and model.

Media strings here are template markup; prompts that hold a caption, question or
instruction are ``Prompt`` tuples whose user text is wrapped in ``UserText``, so it is
encoded as ordinary text (text is text: a ``"</s>"`` in a caption never becomes the eos
id). Each piece is encoded on its own with ``DivotTextTokenizer.encode`` (no bos/eos; those
ids are added by hand), with the same ids as the reference's joined strings
(divot-reference.md §5.2, §5.8). The ``[INST] ... [/INST]`` template is a raw string, not
a chat template: Mistral v0.1 has no control id for ``[INST]``, so the same words in user
text encode to the same pieces. That cannot change a sequence's structure — which tokens
are supervised and where the media go come from the pieces the builder assembles, never
from parsing the text — so user text is kept verbatim rather than altered.

``tokens_per_clip`` always comes from the model's setup (``llm_tokens_per_clip``: the video
tokenizer's N, 64 for the released Divot tokenizer, or ``model.resampler.num_queries``),
never from a literal.
"""

from __future__ import annotations

from divot_llm.text.special_tokens import (
    FRAME_END,
    FRAME_START,
    IMG_END,
    IMG_START,
    VID_END,
    VID_START,
    frame_token,
)
from divot_llm.text.tokenizer import Prompt, UserText

# Label value the LM loss ignores (PyTorch's cross-entropy default).
IGNORE_INDEX = -100

# Values of the 2-D integer attention mask the data pipeline produces.
ATTEND = 1  # normal causal token
PADDING = 0  # never attended to
QUERY = -1  # generation query: attends bidirectionally within its block of N


def frame_tokens(tokens_per_clip: int) -> str:
    """``<frame_00000>...<frame_{N-1}>``: the N placeholders (or queries) of one clip."""
    return "".join(frame_token(i) for i in range(tokens_per_clip))


def clip_tokens(tokens_per_clip: int) -> str:
    """One clip: ``<frame>`` + N frame tokens + ``</frame>`` (N + 2 tokens)."""
    return FRAME_START + frame_tokens(tokens_per_clip) + FRAME_END


def video_tokens(num_clips: int, tokens_per_clip: int) -> str:
    """A video of C clips: ``<vid>`` + C clips + ``</vid>`` (2 + C·(N + 2) tokens)."""
    if num_clips < 1:
        raise ValueError(f"a video needs at least one clip, got {num_clips}")
    return VID_START + clip_tokens(tokens_per_clip) * num_clips + VID_END


def image_tokens(tokens_per_clip: int) -> str:
    """An image (a static clip): ``<img>`` + one clip + ``</img>``."""
    return IMG_START + clip_tokens(tokens_per_clip) + IMG_END


def generation_queries(tokens_per_clip: int) -> str:
    """What inference appends after the generated ``<vid>``: ``<frame>`` + N queries, no
    ``</frame>`` (the queries are read in one forward pass, nothing follows them)."""
    return FRAME_START + frame_tokens(tokens_per_clip)


def _turn(*parts: str | UserText) -> Prompt:
    """``"[INST] " + parts + " [/INST]\\n"``, the Mistral-instruct turn used everywhere."""
    return ("[INST] ", *parts, " [/INST]\n")


def instruction(text: str) -> Prompt:
    """``"[INST] {text} [/INST]\\n"`` around a user's instruction."""
    return _turn(UserText(text))


def comprehension_prompt(media: str, question: str) -> Prompt:
    """First QA turn: ``"[INST] " + media tokens + question + " [/INST]\\n"``.

    The reference strips a ``"<video>\\n"`` literal from the question first; so do we.
    """
    return _turn(media, UserText(question.replace("<video>\n", "")))


def followup_turn(question: str) -> Prompt:
    """Later QA turns: ``"\\n[INST] " + question + " [/INST]\\n"``."""
    return ("\n", *_turn(UserText(question)))


def generation_prompt(caption: str, media: str = "video") -> Prompt:
    """Inference prompt for generation: ``[INST] Generate a video of {caption} [/INST]\\n``
    (``"Generate an image of ..."`` for images)."""
    if media == "video":
        return _turn("Generate a video of ", UserText(caption))
    if media == "image":
        return _turn("Generate an image of ", UserText(caption))
    raise ValueError(f"media must be 'video' or 'image', got {media!r}")


# SFT-generation instructions, verbatim and in order from the reference
# (`gen_prompt_video_all`, 17 items; `gen_prompt_image_all`, 22 items; divot-reference
# §5.8). One is drawn per sample (the reference uses `random.choice`; we draw with the
# sample's seeded generator so a build is reproducible) and followed by " " + caption.
VIDEO_GENERATION_PROMPTS: tuple[str, ...] = (
    "Please show me a video of",
    "Please create a video of",
    "Please produce a video of",
    "Please generate a video of",
    "I'd like to see a video of",
    "I'd love to see a video of",
    "I'd like to view a video of",
    "I want to see a video of",
    "I would like to see a video of",
    "Show me a video of",
    "Generate a video of",
    "Create a video of",
    "Produce a video of",
    "Generate a video:",
    "Create a video:",
    "Produce a video:",
    "Show me a video:",
)
IMAGE_GENERATION_PROMPTS: tuple[str, ...] = (
    "Please show me a picture of",
    "Please design an image of",
    "Please produce a photo of",
    "Please generate an image of",
    "Please draw a painting of",
    "I'd like to see a drawing of",
    "I'd love to see an illustration of",
    "I'd like to view an image of",
    "I want to see a picture of",
    "I would like to see a photo of",
    "Show me a photo of",
    "Generate a picture of",
    "Show me a photograph of",
    "Generate an image of",
    "Generate an image:",
    "Generate a picture:",
    "Generate a painting:",
    "Generate a photograph:",
    "Show me a photograph:",
    "Draw a picture:",
    "Draw a painting:",
    "Draw an image:",
)


def generation_instruction(prompt: str, caption: str) -> Prompt:
    """SFT-generation turn: ``"[INST] {prompt} {caption} [/INST]\\n"`` (``prompt`` is one of
    the reference's prompts above, ``caption`` user text)."""
    return _turn(f"{prompt} ", UserText(caption))
