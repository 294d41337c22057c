"""VidTok tokens in LLM sequences: the sequence builder's templates and masks decide where
a clip's tokens go -- comprehension placeholders and generation queries -- and the model
writes and reads exactly those positions, in clip and token order, whatever the tokenizer
(KL latents through the GMM, FSQ digits through a code head) and resampler (one LLM token
per latent patch, or learned queries)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from divot_llm.config.loading import compose_config
from divot_llm.data.collate import collate
from divot_llm.data.sequences import SequenceBuilder, sequence_example
from divot_llm.model import build_divot_llm, llm_tokens_per_clip
from divot_llm.text import FRAME_START, QUERY
from divot_llm.tokenizers import build_video_tokenizer

CASES = {  # name: (video tokenizer, model.head, resampler kind)
    "kl-gmm-patches": ("vidtok_tiny", "gmm", "tokenwise"),
    "fsq-factorized-patches": ("vidtok_tiny_fsq", "fsq_factorized", "tokenwise"),
    "kl-gmm-queries": ("vidtok_tiny", "gmm", "queries"),
}


@pytest.fixture(scope="module", params=list(CASES))
def setup(request, text_tokenizer):
    tokenizer_name, head, kind = CASES[request.param]
    cfg = compose_config([
        f"video_tokenizer={tokenizer_name}", "video_tokenizer.llm_patch_size=2", f"model.head={head}",
        f"model.resampler.kind={kind}", "model.resampler.num_queries=6",
    ])  # fmt: skip
    torch.manual_seed(0)
    video_tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    frames = torch.rand(
        3, video_tokenizer.frames_per_clip, 3, 32, 32, generator=torch.Generator().manual_seed(1)
    )
    feats_cnd = video_tokenizer.encode(frames * 2 - 1)  # 3 clips: 2 to read, 1 to write
    model = build_divot_llm(
        cfg.model, feature_tokens=video_tokenizer.num_tokens, feature_dim=video_tokenizer.feature_dim,
        feature_levels=video_tokenizer.feature_levels,
    ).eval()  # fmt: skip
    m = llm_tokens_per_clip(cfg.model, video_tokenizer)
    builder, rng = SequenceBuilder(text_tokenizer, m), np.random.default_rng(0)
    comp = builder.build("sft_comp", "video", 2, 4096, rng, turns=[("What colour?", "Red.")])
    gen = builder.build("pretrain_gen", "video", 1, 4096, rng, captions=["a blue square"])
    batch = collate(
        [
            sequence_example(comp, "sft_comp", "video_feats", feats_cnd[:2], source="t", key="comp"),
            sequence_example(gen, "pretrain_gen", "video_feats", feats_cnd[2:], source="t", key="gen"),
        ],
        text_tokenizer.pad_id,
    )
    return model, m, feats_cnd, batch


def frame_runs(input_ids: torch.Tensor, start_id: int, m: int) -> list[int]:
    """Positions of the m tokens after each ``<frame>`` of one row, in order."""
    starts = (input_ids == start_id).nonzero().flatten().tolist()
    return [p for s in starts for p in range(s + 1, s + 1 + m)]


def test_the_masks_mark_the_frame_tokens_the_templates_wrote(setup, text_tokenizer):
    model, m, _, batch = setup
    assert model.tokens_per_clip == m
    start_id, frame_ids = text_tokenizer.token_to_id(FRAME_START), text_tokenizer.frame_token_ids(m)
    for row, mask_key in ((0, "ids_cmp_mask"), (1, "ids_gen_mask")):
        ids = batch["input_ids"][row]
        marked = batch[mask_key][row].nonzero().flatten().tolist()
        assert marked == frame_runs(ids, start_id, m)
        assert ids[marked].tolist() == frame_ids * (len(marked) // m)
    assert not batch["ids_gen_mask"][0].any() and not batch["ids_cmp_mask"][1].any()
    # the generation clip's tokens are the one bidirectional query block
    assert torch.equal(batch["attention_mask"][1] == QUERY, batch["ids_gen_mask"][1].bool())


def test_the_model_writes_clips_at_the_placeholders_and_reads_the_queries(setup):
    model, m, feats_cnd, batch = setup
    masks = {
        k: batch[k].bool() for k in ("embeds_cmp_mask", "embeds_gen_mask", "ids_cmp_mask", "ids_gen_mask")
    }
    with torch.no_grad():
        embeds = model.embed(
            batch["input_ids"], batch["video_feats"], masks["embeds_cmp_mask"], masks["ids_cmp_mask"]
        )
        text_embeds = model.llm.get_input_embeddings()(batch["input_ids"])
        clips_gmh = model.input_resampler(feats_cnd[:2])  # (2 clips, M, H), clip order
        hidden = model.hidden_states(embeds, batch["attention_mask"])
        params = model.query_head_params(hidden, masks["ids_gen_mask"])
    placeholders = masks["ids_cmp_mask"]
    torch.testing.assert_close(embeds[placeholders], clips_gmh.reshape(2 * m, -1))
    torch.testing.assert_close(embeds[~placeholders], text_embeds[~placeholders])
    # the head reads the query block's hidden states: (1 clip, N feature tokens, P)
    queries_mh = hidden[1][masks["ids_gen_mask"][1]]
    torch.testing.assert_close(params, model.output_resampler(queries_mh.unsqueeze(0)))
    assert params.shape == (1, feats_cnd.shape[1], model.video_head.param_dim)
    out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "video_feats", *masks)})
    torch.testing.assert_close(out.gmm_loss, model.video_head.nll(params[0], feats_cnd[2]).mean())


def test_the_features_are_the_tokenizers_layout(setup):
    model, _, feats_cnd, batch = setup
    assert feats_cnd.shape[1:] == (model.feature_tokens, model.feature_dim)
    assert torch.equal(batch["video_feats"][0, :2], feats_cnd[:2])
    assert torch.equal(batch["video_feats"][1, 0], feats_cnd[2])
