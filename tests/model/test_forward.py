"""DivotLLM.forward: losses, per-sample indexing of mixed batches, frozen and idle heads."""

from __future__ import annotations

import functools

import pytest
import torch

from divot_llm.model import build_attention_mask
from divot_llm.text import IGNORE_INDEX
from tests.model.samples import collate, comprehension_sample, generation_sample, perturb_trainable


@pytest.fixture
def samples(text_tokenizer, feat_shape):
    n, d = feat_shape
    gen = torch.Generator().manual_seed(3)
    tok = text_tokenizer
    return {
        "comp2": comprehension_sample(
            tok, n, torch.randn(2, n, d, generator=gen), "a red circle moving left"
        ),
        "gen": generation_sample(tok, n, torch.randn(1, n, d, generator=gen), "a blue square"),
        "comp1": comprehension_sample(tok, n, torch.randn(1, n, d, generator=gen), "green"),
        "gen_long": generation_sample(
            tok, n, torch.randn(1, n, d, generator=gen), "a yellow triangle moving up fast"
        ),
    }


@pytest.fixture
def trained(make_model):
    model = make_model()
    perturb_trainable(model)
    return model.eval()


def test_mixed_batch_gives_the_per_sample_losses_of_samples_run_alone(trained, samples, text_tokenizer):
    order = ["comp2", "gen", "comp1", "gen_long"]
    with torch.no_grad():
        mixed = trained(**collate([samples[k] for k in order], text_tokenizer.pad_id))
        for row, key in enumerate(order):
            alone = trained(**collate([samples[key]], text_tokenizer.pad_id))
            torch.testing.assert_close(mixed.lm_loss_per_sample[row], alone.lm_loss, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mixed.gmm_loss_per_sample[row], alone.gmm_loss, atol=1e-5, rtol=1e-5)
    is_gen = torch.tensor([False, True, False, True])
    assert (mixed.gmm_loss_per_sample[~is_gen] == 0).all() and (mixed.gmm_loss_per_sample[is_gen] > 0).all()
    # batch losses average over tokens: supervised text tokens / query tokens
    supervised = torch.tensor([sum(label != IGNORE_INDEX for label in samples[k].labels[1:]) for k in order])
    expected_lm = (mixed.lm_loss_per_sample * supervised).sum() / supervised.sum()
    torch.testing.assert_close(mixed.lm_loss, expected_lm)
    torch.testing.assert_close(mixed.gmm_loss, mixed.gmm_loss_per_sample[is_gen].mean())
    torch.testing.assert_close(mixed.total_loss, mixed.lm_loss + mixed.gmm_loss)


def test_lm_loss_equals_transformers_causal_lm_loss_on_text(trained, samples, text_tokenizer):
    batch = collate([samples["comp2"], samples["comp1"]], text_tokenizer.pad_id)
    del batch["video_feats"]  # text only: the frame tokens keep their own embeddings
    with torch.no_grad():
        ours = trained(**batch)
        theirs = trained.llm(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    torch.testing.assert_close(ours.lm_loss, theirs.loss)


def test_gmm_loss_reads_final_norm_hidden_states_at_the_queries(trained, samples, text_tokenizer):
    """Reference: the peft model's own forward with the 4-D mask; its last
    ``hidden_states`` entry is the final-norm output, taken at the queries (no shift)."""
    batch = collate([samples["gen"]], text_tokenizer.pad_id)
    with torch.no_grad():
        loss = trained(**batch).gmm_loss
        mask = build_attention_mask(batch["attention_mask"], trained.tokens_per_clip, torch.float32)
        out = trained.llm(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True)
        params = trained.output_resampler(out.hidden_states[-1][batch["ids_gen_mask"]])
        expected = trained.video_head.nll(params, batch["video_feats"][0, 0]).mean()
    torch.testing.assert_close(loss, expected)


def test_comprehension_features_replace_the_placeholders(trained, samples, text_tokenizer):
    batch = collate([samples["comp2"], samples["gen"]], text_tokenizer.pad_id)
    with torch.no_grad():
        base = trained(**batch)
        edited = dict(batch, video_feats=batch["video_feats"].clone())
        edited["video_feats"][0, 1] += 1.0  # second clip of the comprehension sample
        moved = trained(**edited)
        # one more clip slot per sample, filled with noise but masked out (clip padding)
        no_clip = torch.zeros(2, 1, dtype=torch.bool)
        with_pad_clip = trained(
            **dict(
                batch,
                video_feats=torch.cat(
                    [batch["video_feats"], torch.randn_like(batch["video_feats"][:, :1])], 1
                ),
                embeds_cmp_mask=torch.cat([batch["embeds_cmp_mask"], no_clip], 1),
                embeds_gen_mask=torch.cat([batch["embeds_gen_mask"], no_clip], 1),
            )
        )
    assert not torch.allclose(moved.lm_loss_per_sample[0], base.lm_loss_per_sample[0])
    torch.testing.assert_close(moved.lm_loss_per_sample[1], base.lm_loss_per_sample[1])
    torch.testing.assert_close(with_pad_clip.lm_loss_per_sample, base.lm_loss_per_sample)
    torch.testing.assert_close(with_pad_clip.gmm_loss_per_sample, base.gmm_loss_per_sample)


def test_placeholder_count_mismatch_names_the_sample(trained, samples, text_tokenizer):
    batch = collate([samples["gen"], samples["comp2"]], text_tokenizer.pad_id)
    batch["ids_cmp_mask"][1, batch["ids_cmp_mask"][1].nonzero()[0, 0]] = False
    n = trained.tokens_per_clip
    with pytest.raises(
        ValueError, match=rf"sample 1: {2 * n - 1} comprehension placeholder tokens, expected {n} x 2"
    ):
        trained(**batch)
    batch = collate([samples["gen"]], text_tokenizer.pad_id)
    batch["ids_gen_mask"][0, 0] = True
    with pytest.raises(ValueError, match=r"sample 0: .* generation query tokens"):
        trained(**batch)


@pytest.mark.parametrize(
    ("train_in", "train_out"),
    [(True, True), (True, False), (False, True)],
    ids=["pretrain", "sft_comp", "sft_gen"],
)
def test_stage_freezes_heads_and_idle_heads_still_get_gradients(
    make_model, samples, text_tokenizer, train_in, train_out
):
    """A trainable head unused by a batch must still receive a (zero) gradient, or
    DeepSpeed/DDP ranks wait for each other; a frozen head gets none."""
    model = make_model(train_input_proj=train_in, train_output_proj=train_out)
    assert all(p.requires_grad == train_in for p in model.input_resampler.parameters())
    assert all(p.requires_grad == train_out for p in model.output_resampler.parameters())
    for key, idle, used in [
        ("comp1", "output_resampler", "input_resampler"),
        ("gen", "input_resampler", "output_resampler"),
    ]:
        model.zero_grad(set_to_none=True)
        model(**collate([samples[key]], text_tokenizer.pad_id)).total_loss.backward()
        for name, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, name
            else:
                assert p.grad is not None, name
                if name.startswith(idle):
                    assert torch.count_nonzero(p.grad) == 0, name
        used_head = getattr(model, used)
        if any(p.requires_grad for p in used_head.parameters()):
            assert any(torch.count_nonzero(p.grad) > 0 for p in used_head.parameters())


def test_deepspeed_zero3_trains_on_single_task_batches(ds_process_group, make_model, samples, text_tokenizer):
    """In a ZeRO-3 engine, batches that leave one head idle run forward/backward/step,
    and the loss of a fixed mixed batch falls."""
    import deepspeed

    model = make_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "ignore_unused_parameters": False},
        "gradient_clipping": 1.0,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    fixed = collate([samples["comp1"], samples["gen"]], text_tokenizer.pad_id)
    with torch.no_grad():
        before = engine(**fixed).total_loss.item()
    for step in range(6):
        batch = collate([samples["comp1" if step % 2 else "gen"]], text_tokenizer.pad_id)
        loss = engine(**batch).total_loss
        engine.backward(loss)
        engine.step()
    with torch.no_grad():
        after = engine(**fixed).total_loss.item()
    assert after < before


def test_selective_recompute_keeps_losses_and_gradients(samples, text_tokenizer, tiny_cfg, feat_shape):
    from divot_llm.config import apply_overrides
    from divot_llm.model import build_divot_llm, checkpointed_layers
    from divot_llm.model.build import recomputed_fraction

    batch = collate([samples["comp2"], samples["gen"]], text_tokenizer.pad_id)
    results = {}
    for every in (0, 2):  # none; layers 0 and 2 of 3 (1 = all is the same mechanism, every_n_layers=1)
        cfg = apply_overrides(
            tiny_cfg, ["model.llm.num_hidden_layers=3", f"model.llm.checkpoint_every={every}"]
        )
        torch.manual_seed(0)
        model = build_divot_llm(cfg.model, feature_tokens=feat_shape[0], feature_dim=feat_shape[1])
        # checkpointing only acts in training mode; LoRA dropout off so the runs are equal
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        layers = model.causal_lm.model.layers
        # a layer's submodules run again when backward recomputes it (hooks on the layer
        # itself stay outside the checkpoint; pre-hooks, as the recompute stops early once
        # it has every saved tensor)
        mlp_calls = [0] * len(layers)

        def count(*_, i: int, calls: list[int] = mlp_calls) -> None:
            calls[i] += 1

        for i, layer in enumerate(layers):
            layer.mlp.register_forward_pre_hook(functools.partial(count, i=i))
        out = model(**batch)
        assert mlp_calls == [1, 1, 1]
        out.total_loss.backward()
        recomputed = [i for i, calls in enumerate(mlp_calls) if calls == 2]
        assert recomputed == {0: [], 2: [0, 2]}[every]
        assert recomputed_fraction(model) == len(recomputed) / 3 == checkpointed_layers(every, 3) / 3
        results[every] = (
            out.total_loss.detach(),
            {n: p.grad for n, p in model.named_parameters() if p.requires_grad},
        )
    torch.testing.assert_close(results[2][0], results[0][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[2][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_one_clip_per_sample_may_omit_the_clip_dim(trained, samples, text_tokenizer):
    """The reference's image pipes give (B,) clip masks; (B, N, D) features + (B,) masks
    mean one clip per sample."""
    batch = collate([samples["gen"], samples["comp1"]], text_tokenizer.pad_id)
    squeezed = dict(
        batch,
        video_feats=batch["video_feats"][:, 0],
        embeds_cmp_mask=batch["embeds_cmp_mask"][:, 0],
        embeds_gen_mask=batch["embeds_gen_mask"][:, 0],
    )
    with torch.no_grad():
        full, short = trained(**batch), trained(**squeezed)
    torch.testing.assert_close(short.lm_loss_per_sample, full.lm_loss_per_sample)
    torch.testing.assert_close(short.gmm_loss_per_sample, full.gmm_loss_per_sample)


@pytest.mark.gpu  # compiling the tiny layers takes ~50 s on a CPU (inductor's C++ build)
def test_compiled_layers_give_the_same_loss_and_gradients(samples, text_tokenizer, tiny_cfg, feat_shape):
    from divot_llm.config import apply_overrides
    from divot_llm.model import build_divot_llm

    batch = {
        k: v.cuda() for k, v in collate([samples["comp2"], samples["gen"]], text_tokenizer.pad_id).items()
    }
    results = []
    for compiled in (False, True):
        cfg = apply_overrides(
            tiny_cfg, [f"model.llm.compile={compiled}", "model.llm.checkpoint_every=2"]
        ).model
        torch.manual_seed(0)
        model = build_divot_llm(cfg, feature_tokens=feat_shape[0], feature_dim=feat_shape[1]).cuda()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        out = model(**batch)
        out.total_loss.backward()
        results.append((out.total_loss.detach(), model.input_resampler.proj[0].weight.grad))
        # compiled in place: parameter names (checkpoints, peft paths) are unchanged
        assert all(
            (layer._compiled_call_impl is not None) == compiled for layer in model.causal_lm.model.layers
        )
        assert not any("_orig_mod" in name for name in model.state_dict())
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-4, rtol=1e-4)
