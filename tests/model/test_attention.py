"""The query-block attention mask, checked through a real (tiny) Mistral forward."""

from __future__ import annotations

import pytest
import torch

from divot_llm.model import build_attention_mask
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
    model.causal_lm.set_attn_implementation("eager")
    eager = run(model, embeds, mask)
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


def test_flash_attention_refuses_batches_with_query_blocks(setup):
    model, embeds, mask, _ = setup
    model.causal_lm.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attention_2"):
        model.hidden_states(embeds, mask)
