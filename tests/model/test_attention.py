"""The attention pattern (one FlexAttention mask_mod), checked through a real (tiny)
Mistral forward, against an independent dense formula, and through every kernel that
runs on a CPU: the dense SDPA and eager masks, and FlexAttention's BlockMask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers.integrations.flex_attention as hf_flex
from torch.nn.attention.flex_attention import create_mask, flex_attention

from divot_llm.model import AttentionLayout, attention_kernel, build_attention_mask, query_block_ids
from divot_llm.text import ATTEND, PADDING, QUERY


def layout(n: int) -> tuple[torch.Tensor, dict[str, list[int]]]:
    """Two rows of the 2-D mask and where things are.

    row 0: 3 text | block A (N queries) | 2 text | block B (N queries) | 1 text | 2 pad
    row 1: 2 text | 2N queries in one run (blocks C, D) | 1 text | pad ... (same length)
    """
    row0 = [ATTEND] * 3 + [QUERY] * n + [ATTEND] * 2 + [QUERY] * n + [ATTEND] + [PADDING] * 2
    row1 = [ATTEND] * 2 + [QUERY] * (2 * n) + [ATTEND]
    row1 += [PADDING] * (len(row0) - len(row1))
    a0 = 3
    b0 = a0 + n + 2
    where = {
        "A": list(range(a0, a0 + n)),
        "B": list(range(b0, b0 + n)),
        "between": [a0 + n, a0 + n + 1],
        "pad0": [len(row0) - 2, len(row0) - 1],
        "C": list(range(2, 2 + n)),
        "D": list(range(2 + n, 2 + 2 * n)),
    }
    return torch.tensor([row0, row1]), where


def run(model, embeds, mask):
    with torch.no_grad():
        return model.hidden_states(embeds, mask)


def perturbed(embeds: torch.Tensor, row: int, pos: int) -> torch.Tensor:
    out = embeds.clone()
    out[row, pos] += torch.randn(out.shape[-1])
    return out


def changed(h1: torch.Tensor, h2: torch.Tensor, row: int, positions: list[int]) -> list[bool]:
    return [not torch.allclose(h1[row, p], h2[row, p], atol=1e-6) for p in positions]


@pytest.fixture
def setup(make_model, feat_shape):
    model = make_model().eval()
    n, _ = feat_shape
    mask, where = layout(n)
    embeds = torch.randn(*mask.shape, model.causal_lm.config.hidden_size)
    return model, embeds, mask, where


def test_later_query_in_a_block_changes_earlier_queries(setup):
    model, embeds, mask, where = setup
    base = run(model, embeds, mask)
    after = run(model, perturbed(embeds, 0, where["A"][-1]), mask)
    assert all(changed(base, after, 0, where["A"]))  # every query of A sees A's last query
    assert not any(changed(base, after, 0, list(range(where["A"][0]))))  # text before A does not
    # a later block never leaks into an earlier one, even when the two are adjacent
    after = run(model, perturbed(embeds, 0, where["B"][-1]), mask)
    assert all(changed(base, after, 0, where["B"]))
    assert not any(changed(base, after, 0, where["A"] + where["between"]))
    after = run(model, perturbed(embeds, 1, where["D"][0]), mask)
    assert all(changed(base, after, 1, where["D"]))
    assert not any(changed(base, after, 1, where["C"]))


def test_later_normal_token_does_not_change_earlier_ones(setup):
    model, embeds, mask, where = setup
    base = run(model, embeds, mask)
    pos = where["between"][1]
    after = run(model, perturbed(embeds, 0, pos), mask)
    assert not any(changed(base, after, 0, list(range(pos))))
    assert all(changed(base, after, 0, [pos, *where["B"]]))  # later tokens do see it


def test_padded_positions_never_leak(setup):
    model, embeds, mask, where = setup
    real = (mask != PADDING).nonzero().tolist()
    base = run(model, embeds, mask)
    # right padding: anything in the pad slots leaves every real output unchanged
    noisy = embeds.clone()
    noisy[mask == PADDING] = torch.randn(int((mask == PADDING).sum()), embeds.shape[-1]) * 10
    after = run(model, noisy, mask)
    for row, pos in real:
        torch.testing.assert_close(after[row, pos], base[row, pos])
    # a hole inside a row (left padding, packing): later tokens must not attend to it
    holed = mask.clone()
    holed[0, 1] = PADDING
    h1 = run(model, embeds, holed)
    h2 = run(model, perturbed(embeds, 0, 1), holed)
    later = [p for p in range(2, mask.shape[1]) if holed[0, p] != PADDING]
    assert not any(changed(h1, h2, 0, later))


def test_eager_and_sdpa_agree_on_the_4d_mask(setup):
    model, embeds, mask, _ = setup
    sdpa = run(model, embeds, mask)
    assert model.last_attention_kernel == "sdpa+dense_mask"
    model.attn_implementation = "eager"
    eager = run(model, embeds, mask)
    assert model.last_attention_kernel == "eager+dense_mask"
    valid = mask != PADDING
    torch.testing.assert_close(eager[valid], sdpa[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sliding_window", [None, 3])
def test_without_queries_the_mask_equals_transformers_causal_mask(make_model, sliding_window):
    model = make_model().eval()
    decoder = model.causal_lm.model
    decoder.config.sliding_window = sliding_window
    mask_bt = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    embeds = torch.randn(2, 9, decoder.config.hidden_size)
    with torch.no_grad():
        ours = decoder(
            inputs_embeds=embeds,
            attention_mask=build_attention_mask(mask_bt, 4, torch.float32, sliding_window),
        )
        theirs = decoder(inputs_embeds=embeds, attention_mask=mask_bt)
    valid = mask_bt.bool()
    torch.testing.assert_close(
        ours.last_hidden_state[valid], theirs.last_hidden_state[valid], atol=1e-5, rtol=1e-5
    )


def test_query_run_not_a_multiple_of_the_block_size_is_an_error(feat_shape):
    n, _ = feat_shape
    mask = torch.tensor([[1] * (n + 3), [1, 1] + [QUERY] * (n + 1)])
    with pytest.raises(
        ValueError, match=f"sample 1: .* length {n + 1}, not a multiple of the query block size {n}"
    ):
        build_attention_mask(mask, n, torch.float32)


def test_flash_attention_serves_a_query_block_batch_through_sdpa(setup):
    # flash-attn is not installed here: the query-block batch must never reach it
    model, embeds, mask, _ = setup
    sdpa = run(model, embeds, mask)
    model.attn_implementation = "flash_attention_2"
    fallback = run(model, embeds, mask)
    assert model.last_attention_kernel == "sdpa+dense_mask"
    torch.testing.assert_close(fallback, sdpa)


@pytest.mark.parametrize(
    ("requested", "on_gpu", "queries", "packed", "padded", "kernel"),
    [
        ("flex_attention", True, True, True, True, "flex_attention"),
        ("flex_attention", True, False, False, False, "flex_attention"),
        ("flex_attention", False, True, False, False, "sdpa+dense_mask"),  # CPU: same mask, dense
        ("flex_attention", False, False, False, True, "sdpa_causal"),
        ("sdpa", True, False, True, False, "sdpa+dense_mask"),
        ("eager", False, False, False, True, "eager_causal"),
        ("flash_attention_2", True, False, True, True, "flash_attention_2_varlen"),
        ("flash_attention_2", True, False, False, True, "flash_attention_2_varlen"),
        ("flash_attention_2", True, False, False, False, "flash_attention_2"),
        ("flash_attention_2", True, True, False, False, "sdpa+dense_mask"),  # falls back, never raises
        ("flash_attention_2", True, True, True, True, "sdpa+dense_mask"),
    ],
)
def test_each_batch_gets_a_kernel_that_can_serve_it(requested, on_gpu, queries, packed, padded, kernel):
    chosen = attention_kernel(
        requested, on_gpu=on_gpu, flex_available=True, has_query_blocks=queries, packed=packed, padded=padded
    )
    assert chosen == kernel
    no_flex = attention_kernel(
        requested, on_gpu=on_gpu, flex_available=False, has_query_blocks=queries, packed=packed, padded=padded
    )
    dense_fallback = "sdpa+dense_mask" if queries or packed else "sdpa_causal"
    assert no_flex == (dense_fallback if kernel == "flex_attention" else kernel)


def reference_mask(mask_bt, block_size, sliding_window, segment_bt) -> torch.Tensor:
    """The rule written out densely, independently of ``mask_mod`` (the pre-FlexAttention
    implementation): ``(B, 1, T, T)`` bool."""
    _, seq_len = mask_bt.shape
    pos_t = torch.arange(seq_len)
    causal_tt = pos_t[:, None] >= pos_t[None, :]
    if sliding_window is not None:
        causal_tt = causal_tt & (pos_t[:, None] - pos_t[None, :] < sliding_window)
    allowed_btt = causal_tt[None] & (mask_bt != PADDING)[:, None, :]
    allowed_btt = allowed_btt & (segment_bt[:, :, None] == segment_bt[:, None, :])
    block_bt = query_block_ids(mask_bt == QUERY, block_size)
    same_block_btt = (block_bt[:, :, None] == block_bt[:, None, :]) & (block_bt[:, :, None] >= 0)
    return (allowed_btt | same_block_btt | torch.eye(seq_len, dtype=torch.bool)).unsqueeze(1)


def random_packed_batch(generator: torch.Generator, rows: int, seq_len: int, n: int):
    """Rows of random segments: text, whole query blocks (1-2 per run), right padding."""
    mask_bt = torch.full((rows, seq_len), PADDING)
    segment_bt = torch.zeros(rows, seq_len, dtype=torch.long)
    for row in range(rows):
        pos, segment = 0, 1
        end = seq_len - int(torch.randint(0, 6, (1,), generator=generator))
        while pos < end:
            length = min(int(torch.randint(3, 3 * n + 6, (1,), generator=generator)), end - pos)
            body = [ATTEND] * length
            blocks = int(torch.randint(0, 3, (1,), generator=generator))
            start = int(torch.randint(1, max(2, length - blocks * n), (1,), generator=generator))
            if blocks and start + blocks * n <= length:
                body[start : start + blocks * n] = [QUERY] * (blocks * n)
            mask_bt[row, pos : pos + length] = torch.tensor(body)
            segment_bt[row, pos : pos + length] = segment
            pos, segment = pos + length, segment + 1
    return mask_bt, segment_bt


@pytest.mark.parametrize("sliding_window", [None, 5])
def test_mask_mod_equals_the_dense_reference_on_random_packed_batches(sliding_window):
    generator = torch.Generator().manual_seed(3)
    n = 4
    for _ in range(5):
        mask_bt, segment_bt = random_packed_batch(generator, rows=3, seq_len=40, n=n)
        assert (mask_bt == QUERY).any() and int(segment_bt.max()) >= 2
        layout = AttentionLayout.from_batch(mask_bt, n, sliding_window, segment_bt)
        expected = reference_mask(mask_bt, n, sliding_window, segment_bt)
        assert torch.equal(layout.dense(), expected)
        # torch's own materialisation of the mask_mod (vmap over every index pair) agrees
        assert torch.equal(create_mask(layout.mask_mod(), 3, 1, 40, 40, device="cpu"), expected)
        additive = build_attention_mask(mask_bt, n, torch.float32, sliding_window, segment_bt)
        assert torch.equal(additive == 0, expected)


def test_flex_attention_with_the_block_mask_equals_dense_sdpa():
    mask_bt, segment_bt = random_packed_batch(torch.Generator().manual_seed(5), rows=2, seq_len=48, n=4)
    layout = AttentionLayout.from_batch(mask_bt, 4, sliding_window=6, segment_bt=segment_bt)
    q, k, v = (torch.randn(2, 4, 48, 8) for _ in range(3))
    # eager FlexAttention on the CPU (compiling it here takes ~20 s): the kernel's own
    # reading of the BlockMask, tile skipping included
    flex = flex_attention(q, k, v, block_mask=layout.block_mask(compile_mask=False))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.dense())
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


def test_mistral_takes_the_block_mask_through_its_flex_attention(make_model, monkeypatch, feat_shape):
    # transformers' flex_attention path with our BlockMask (eager kernel, not compiled)
    # equals the same model on the dense SDPA mask
    monkeypatch.setattr(
        hf_flex,
        "compile_friendly_flex_attention",
        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw),
    )
    n, _ = feat_shape
    model = make_model().eval()
    decoder = model.causal_lm.model
    mask_bt, segment_bt = random_packed_batch(
        torch.Generator().manual_seed(7), rows=2, seq_len=3 * n + 20, n=n
    )
    layout = AttentionLayout.from_batch(mask_bt, n, decoder.config.sliding_window, segment_bt)
    embeds = torch.randn(*mask_bt.shape, decoder.config.hidden_size)
    with torch.no_grad():
        decoder.config._attn_implementation = "sdpa"
        dense = decoder(inputs_embeds=embeds, attention_mask=layout.dense()).last_hidden_state
        decoder.config._attn_implementation = "flex_attention"
        flex = decoder(
            inputs_embeds=embeds, attention_mask=layout.block_mask(compile_mask=False)
        ).last_hidden_state
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
