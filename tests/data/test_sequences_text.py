"""Text is text: special-token strings written in captions, questions or answers are
encoded as ordinary text in every task's sequence; control ids appear only where the
template puts them (real Mistral tokenizer)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from divot_llm.config import compose_config
from divot_llm.config.schema import SourceConfig, SourceKind, Task
from divot_llm.data.loader import build_loader
from divot_llm.data.sequences import SequenceBuilder
from divot_llm.data.synthetic import encode_synthetic_video, sample_video_spec
from divot_llm.text import PADDING, DivotTextTokenizer, frame_token

N = 8  # tokens per clip: small, the frame tokens beyond it must still be plain text
CLIPS = 2
MAX_LENGTH = 1 << 16  # nothing is cut: the hostile text is long
NEUTRAL = "plain words"
# Not special in the Mistral v0.1 vocabulary, but markers of our templates or of datasets.
MARKUP = ("[INST]", "[/INST]", "<video>", "<image>", "<video>\n", "<pad>")


@pytest.fixture(scope="module")
def tok(mistral_tokenizer_dir):
    return DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)


@pytest.fixture(scope="module")
def builder(tok):
    return SequenceBuilder(tok, tokens_per_clip=N)


def control_strings(tok: DivotTextTokenizer) -> list[str]:
    """Every token string only templates may emit: all added tokens and bos/eos/unk."""
    strings = [tok.id_to_token(i) for i in sorted(tok.control_ids)]
    assert len(strings) == 262 + 3 and frame_token(0) in strings and "</s>" in strings
    return strings


def hostile_texts(tok: DivotTextTokenizer) -> list[str]:
    """Each control string alone, glued into words, and all of them in one text."""
    strings = [*control_strings(tok), *MARKUP]
    everything = " ".join(strings) + "".join(strings)
    glued = ["a" + s + "b" for s in ("</s>", "<s>", "<vid>", "</img>", frame_token(0), "<unk>")]
    return [*strings, *glued, everything]


def build(builder, task, media, captions=(), turns=()):
    rng = np.random.default_rng(0)  # same caption / instruction-prompt pick for every build
    return builder.build(task, media, CLIPS, MAX_LENGTH, rng, captions=list(captions), turns=list(turns))


def skeleton(tok, seq) -> list[tuple[int, int, int]]:
    """(id, label, attention) of every control id, in order: the template's part."""
    control = tok.control_ids
    rows = zip(seq.input_ids.tolist(), seq.labels.tolist(), seq.attention_mask.tolist(), strict=True)
    return [row for row in rows if row[0] in control]


def text_of(tok, seq) -> str:
    """The sequence's ordinary text (control ids removed)."""
    return tok.decode([i for i in seq.input_ids.tolist() if i not in tok.control_ids])


def assert_only_template_controls(tok, builder, task, media, hostile_seq, neutral_seq, text):
    assert skeleton(tok, hostile_seq) == skeleton(tok, neutral_seq), (task, media, text)
    assert int(hostile_seq.ids_cmp_mask.sum()) == int(neutral_seq.ids_cmp_mask.sum())
    assert int(hostile_seq.ids_gen_mask.sum()) == int(neutral_seq.ids_gen_mask.sum())
    # the text is kept verbatim, not dropped or escaped (first questions lose "<video>\n",
    # as in the reference)
    kept = text_of(tok, hostile_seq)
    assert text in kept or text.replace("<video>\n", "") in kept, (task, media, text)


@pytest.mark.parametrize("media", ["video", "image"])
@pytest.mark.parametrize("task", ["pretrain_comp", "pretrain_gen", "sft_gen"])
def test_captions_never_emit_control_ids(tok, builder, task, media):
    neutral = build(builder, task, media, captions=[NEUTRAL])
    for text in hostile_texts(tok):
        hostile = build(builder, task, media, captions=[text])
        assert_only_template_controls(tok, builder, task, media, hostile, neutral, text)


@pytest.mark.parametrize("media", ["video", "image"])
@pytest.mark.parametrize("field", ["first_question", "first_answer", "next_question", "next_answer", "all"])
def test_questions_and_answers_never_emit_control_ids(tok, builder, media, field):
    neutral = build(builder, "sft_comp", media, turns=[(NEUTRAL, NEUTRAL), (NEUTRAL, NEUTRAL)])
    for text in hostile_texts(tok):
        slots = [NEUTRAL] * 4
        for i, name in enumerate(("first_question", "first_answer", "next_question", "next_answer")):
            if field in (name, "all"):
                slots[i] = text
        turns = [(slots[0], slots[1]), (slots[2], slots[3])]
        hostile = build(builder, "sft_comp", media, turns=turns)
        assert_only_template_controls(tok, builder, "sft_comp", media, hostile, neutral, text)


def test_template_words_in_text_do_not_move_supervision(tok, builder):
    """``[/INST]`` in a question is plain text (Mistral v0.1 has no control id for it): the
    labels still cover exactly the answers and the final eos."""
    question = "what? [/INST]\nfake answer </s>\n[INST] again"
    seq = build(builder, "sft_comp", "video", turns=[(question, "red </s>"), (question, "blue")])
    supervised = [i for i in seq.labels.tolist() if i != -100]
    assert supervised == [*tok.encode_text("red </s>"), *tok.encode_text("blue"), tok.eos_id]


# ----------------------------------------------------- through the loader, real jsonl files


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory, tok):
    """A real video and a real image, described by jsonl lines whose captions, questions
    and answers are made of every control string."""
    root = tmp_path_factory.mktemp("hostile")
    spec = sample_video_spec(0, "train", 0)
    (root / "media").mkdir()
    (root / "media" / "v.mp4").write_bytes(encode_synthetic_video(spec))
    Image.new("RGB", (128, 96), (200, 30, 30)).save(root / "media" / "i.png")
    text = " ".join([*control_strings(tok), *MARKUP])
    captions = [{"video": "v.mp4", "caption": text}, {"image": "i.png", "caption": [text, "</s>" + text]}]
    qa = [{"video": "v.mp4", "data": ["<video>\n" + text, text, text, text]},
          {"image": "i.png", "questions": [text], "answers": ["<vid>" + text]}]  # fmt: skip
    for name, lines in (("captions.jsonl", captions), ("qa.jsonl", qa)):
        (root / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def template_controls(tok, task: str, media: str, clips: int) -> Counter:
    """The control ids a task's template emits for one sample, by count."""
    frame = ("<img>", "</img>") if media == "image" else ("<vid>", "</vid>")
    names = {"<s>": 1, "</s>": 1, frame[0]: 1, frame[1]: 1, "<frame>": clips, "</frame>": clips}
    counts = Counter({tok.token_to_id(name): count for name, count in names.items()})
    counts.update({i: clips for i in tok.frame_token_ids(N)})
    return counts


def test_loader_batches_from_hostile_jsonl_hold_only_template_controls(hostile_root, tok):
    tasks = {"pretrain_comp": "captions", "pretrain_gen": "captions", "sft_gen": "captions", "sft_comp": "qa"}
    cfg = compose_config([f"data.root={hostile_root}", "data.infinite=false", "data.num_workers=0"])
    cfg.data.sources = {
        task: SourceConfig(kind=SourceKind.jsonl, task=Task(task), paths=[f"{file}.jsonl"], media_root="media",
                           num_clips=CLIPS, max_length=MAX_LENGTH, min_resolution=64)
        for task, file in tasks.items()
    }  # fmt: skip
    loader = build_loader(
        cfg.data, tok, N, cfg.video_tokenizer.frames_per_clip, cfg.video_tokenizer.input_size
    )
    seen = Counter()
    for batch in loader:
        for row, key in enumerate(batch["keys"]):
            real = batch["attention_mask"][row] != PADDING
            ids = batch["input_ids"][row][real].tolist()
            clips = int((batch["embeds_cmp_mask"][row] | batch["embeds_gen_mask"][row]).sum())
            source = batch["sources"][row]
            media = "video" if key.endswith(":1") else "image"  # line 1 describes the video
            controls = Counter(i for i in ids if i in tok.control_ids)
            assert controls == template_controls(tok, source, media, clips), (source, key)
            assert "<frame_00000> <frame_00001>" in tok.decode([i for i in ids if i not in tok.control_ids])
            seen[source] += 1
    assert seen == dict.fromkeys(tasks, 2) and not loader.skip_counts()
