"""Sequence packing: packed batches train exactly like unpacked ones."""

from __future__ import annotations

import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.data.loader import build_loader
from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset
from divot_llm.model import build_divot_llm
from divot_llm.text import DivotTextTokenizer
from divot_llm.train.metrics import FlopModel, TokenizerFlops

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "embeds_cmp_mask", "embeds_gen_mask", "ids_cmp_mask",
              "ids_gen_mask", "segment_ids", "position_ids")  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mistral_tokenizer_dir):
    root = tmp_path_factory.mktemp("packing") / "synthetic"
    write_synthetic_dataset(root, seed=2, counts=SyntheticCounts(train_videos=8, val_videos=0, images=6))
    return root, DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)


def batches(root, tokenizer, *overrides, n=3):
    cfg = compose_config([f"data.root={root}", "data.num_workers=0", "data.batch_size=6", *overrides])
    vt = cfg.video_tokenizer
    loader = build_loader(cfg.data, tokenizer, vt.num_tokens, vt.frames_per_clip, vt.input_size)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return cfg, out


def with_features(batch, feats_gnd):
    """Write per-clip features in global (example, clip) order, as the trainer does."""
    clips = batch["embeds_cmp_mask"] | batch["embeds_gen_mask"]
    video_feats = torch.zeros(*clips.shape, *feats_gnd.shape[1:])
    video_feats[clips] = feats_gnd
    return {**{k: batch[k] for k in MODEL_KEYS if k in batch}, "video_feats": video_feats}


def test_packed_rows_hold_several_samples_that_never_see_each_other(setup):
    root, tokenizer = setup
    _, packed = batches(root, tokenizer, "data.packing=true", "data.pack_length=400")
    batch = packed[0]
    assert batch["input_ids"].shape[0] < 6  # fewer rows than examples
    assert int(batch["segment_ids"].max()) >= 2
    for row in range(batch["input_ids"].shape[0]):
        for segment in batch["segment_ids"][row].unique().tolist():
            if segment == 0:
                continue
            positions = batch["position_ids"][row][batch["segment_ids"][row] == segment]
            assert positions.tolist() == list(range(len(positions)))  # positions restart
            first = (batch["segment_ids"][row] == segment).nonzero()[0, 0]
            assert batch["input_ids"][row, first] == tokenizer.bos_id


def test_packed_and_unpacked_batches_give_the_same_losses(setup):
    # the 7B configs' attention: FlexAttention block masks on a GPU, here the same mask_mod
    # densely through SDPA
    root, tokenizer = setup
    flex = "model.llm.attn_implementation=flex_attention"
    cfg, plain = batches(root, tokenizer, flex)
    _, packed = batches(root, tokenizer, flex, "data.packing=true", "data.pack_length=400")
    mixed_rows = [  # packed rows holding comprehension clips and generation query blocks
        (batch["embeds_cmp_mask"][row].any() and batch["embeds_gen_mask"][row].any())
        for batch in packed
        for row in range(batch["input_ids"].shape[0])
    ]
    assert any(mixed_rows)
    vt = cfg.video_tokenizer
    torch.manual_seed(0)
    model = build_divot_llm(cfg.model, feature_tokens=vt.num_tokens, feature_dim=vt.feature_dim).eval()
    flop_model = FlopModel.from_model(model, TokenizerFlops(video=1e6, still=1e5), recompute=1.0)
    for a, b in zip(plain, packed, strict=True):
        # MFU: a packed sample's attention is its own T^2, as unpacked, not the row's
        assert flop_model.batch_flops(b) == pytest.approx(flop_model.batch_flops(a), rel=1e-12)
        assert "+".join(a["keys"]) == "+".join(b["keys"])  # same examples, same order
        assert torch.equal(a["frames"], b["frames"])  # the real clips, in the same order
        clips = int((a["embeds_cmp_mask"] | a["embeds_gen_mask"]).sum())
        feats = torch.randn(clips, vt.num_tokens, vt.feature_dim)
        with torch.no_grad():
            out_plain = model(**with_features(a, feats))
            out_packed = model(**with_features(b, feats))
        assert model.last_attention_kernel == "sdpa+dense_mask"
        torch.testing.assert_close(out_packed.lm_loss, out_plain.lm_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out_packed.gmm_loss, out_plain.gmm_loss, rtol=1e-5, atol=1e-5)
        assert out_plain.gmm_loss > 0 or not a["embeds_gen_mask"].any()
