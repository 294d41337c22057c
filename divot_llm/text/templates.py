"""The reference's prompt strings and the sequence conventions shared by data and model.

Strings here are joined into pieces that are encoded one by one with
``DivotTextTokenizer.encode`` (no bos/eos; those ids are added by hand), exactly as the
reference does (divot-reference.md §5.2, §5.8). The ``[INST] ... [/INST]`` template is a
raw string, not a chat template.

``tokens_per_clip`` (N) always comes from the video tokenizer's feature shape (64 for the
released Divot tokenizer), never from a literal.
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


def instruction(text: str) -> str:
    """``"[INST] {text} [/INST]\\n"``, the Mistral-instruct turn used everywhere."""
    return f"[INST] {text} [/INST]\n"


def comprehension_prompt(media: str, question: str) -> str:
    """First QA turn: ``"[INST] " + media tokens + question + " [/INST]\\n"``.

    The reference strips a ``"<video>\\n"`` literal from the question first; so do we.
    """
    return "[INST] " + media + question.replace("<video>\n", "") + " [/INST]\n"


def followup_turn(question: str) -> str:
    """Later QA turns: ``"\\n[INST] " + question + " [/INST]\\n"``."""
    return "\n[INST] " + question + " [/INST]\n"


def generation_prompt(caption: str, media: str = "video") -> str:
    """Inference prompt for generation: ``[INST] Generate a video of {caption} [/INST]\\n``
    (``"Generate an image of ..."`` for images)."""
    if media == "video":
        return instruction(f"Generate a video of {caption}")
    if media == "image":
        return instruction(f"Generate an image of {caption}")
    raise ValueError(f"media must be 'video' or 'image', got {media!r}")


# SFT-generation instructions: one is picked at random and followed by " " + caption
# (divot-reference §5.8: the reference draws from 17 video and 22 image prompts of this
# kind; these lists are ours).
VIDEO_GENERATION_PROMPTS: tuple[str, ...] = (
    "Please generate a video of",
    "Generate a video of",
    "Show me a video:",
    "Create a video showing",
    "Make a short video of",
    "Can you produce a video of",
    "I would like to see a video of",
    "Render a clip of",
    "Produce a video clip showing",
    "Give me a video that shows",
    "Animate",
    "Make a clip:",
    "Create a short clip of",
    "Please make a video showing",
    "Generate a clip where there is",
    "Show a video of",
    "Could you create a video of",
)
IMAGE_GENERATION_PROMPTS: tuple[str, ...] = (
    "Please generate an image of",
    "Generate an image of",
    "Show me an image:",
    "Create an image showing",
    "Draw",
    "Make a picture of",
    "Can you produce an image of",
    "I would like to see a picture of",
    "Render an image of",
    "Paint",
    "Give me a picture that shows",
    "Produce an image of",
    "Create a picture of",
    "Please draw",
    "Generate a picture where there is",
    "Show a picture of",
    "Could you create an image of",
    "Illustrate",
    "Make an image:",
    "Sketch",
    "Create a photo of",
    "Generate a photo of",
)


def generation_instruction(prompt: str, caption: str) -> str:
    """SFT-generation turn: ``"[INST] {prompt} {caption} [/INST]\\n"``."""
    return instruction(f"{prompt} {caption}")
