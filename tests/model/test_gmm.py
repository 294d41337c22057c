"""GMM head: layout, NLL against torch.distributions, sampling statistics, prediction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from divot_llm.model import GMMHead


def reference_mixture(params: torch.Tensor, k: int, d: int, var_scale: float = 1.0) -> MixtureSameFamily:
    """The reference's distribution, built independently from the raw parameters."""
    means = params[..., : k * d].reshape(*params.shape[:-1], k, d)
    var = (
        F.softplus(params[..., k * d : 2 * k * d]).clamp(min=1e-5).reshape(*params.shape[:-1], k, d)
        * var_scale
    )
    logits = params[..., 2 * k * d :]
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(means, var.sqrt()), 1))


@pytest.mark.parametrize("normalize", [True, False])
def test_nll_equals_mixture_same_family(normalize):
    k, d = 4, 16
    head = GMMHead(k, d, normalize_by_dim=normalize)
    params = torch.randn(3, 5, head.param_dim, dtype=torch.float64) * 2
    params[0, 0, k * d : 2 * k * d] = -30.0  # softplus ~ 1e-13: the 1e-5 floor is hit
    target = torch.randn(3, 5, d, dtype=torch.float64)
    expected = -reference_mixture(params, k, d).log_prob(target) / (d if normalize else 1)
    got = head.nll(params, target)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)


def test_nll_runs_in_fp32_for_bf16_params():
    head = GMMHead(4, 16)
    params = torch.randn(2, 8, head.param_dim)
    target = torch.randn(2, 8, 16)
    got = head.nll(params.bfloat16(), target.bfloat16())
    expected = head.nll(params.bfloat16().float(), target.bfloat16().float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_split_layout_is_means_variances_logits():
    k, d = 3, 4
    head = GMMHead(k, d, var_floor=0.5, var_scale=2.0)
    params = torch.arange(head.param_dim, dtype=torch.float32)
    gmm = head.split(params)
    assert head.param_dim == 2 * k * d + k
    assert torch.equal(gmm.means[1], torch.arange(d, 2 * d, dtype=torch.float32))  # component-major
    raw_var = torch.arange(k * d, 2 * k * d, dtype=torch.float32).reshape(k, d)
    torch.testing.assert_close(gmm.variances, F.softplus(raw_var).clamp(min=0.5) * 2.0)
    assert torch.equal(gmm.logits, torch.arange(2 * k * d, 2 * k * d + k, dtype=torch.float32))
    with pytest.raises(ValueError, match="expected 27"):
        head.split(torch.zeros(5))


def test_samples_follow_the_predicted_components():
    """Well-separated components: each draw is attributable to one component, so the
    component frequencies, means and variances of the draws can be checked."""
    k, d, tokens = 3, 2, 60_000
    head = GMMHead(k, d, sample_var_scale=0.1)
    means = torch.tensor([[-20.0, 0.0], [0.0, 20.0], [20.0, -10.0]])
    raw_var = torch.tensor([[0.5, 1.0], [2.0, 0.1], [1.5, 3.0]])
    logits = torch.tensor([0.0, 1.0, -0.5])
    params = torch.cat([means.flatten(), raw_var.flatten(), logits]).expand(tokens, -1)
    draws = head.sample(params, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (tokens, d)

    component = torch.cdist(draws, means).argmin(dim=1)
    freq = torch.bincount(component, minlength=k).float() / tokens
    torch.testing.assert_close(freq, logits.softmax(0), atol=0.01, rtol=0)
    expected_var = F.softplus(raw_var) * 0.1
    for c in range(k):
        mine = draws[component == c]
        torch.testing.assert_close(mine.mean(0), means[c], atol=0.03, rtol=0)
        torch.testing.assert_close(mine.var(0), expected_var[c], rtol=0.05, atol=0)

    # var_scale overrides the inference default; the same generator seed repeats
    wide = head.sample(params[:5000], var_scale=1.0, generator=torch.Generator().manual_seed(1))
    first = wide[torch.cdist(wide, means).argmin(1) == 0]
    torch.testing.assert_close(first.var(0), F.softplus(raw_var[0]), rtol=0.1, atol=0)
    again = head.sample(params[:5000], var_scale=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(wide, again)


def test_predict_is_the_weighted_mean_of_the_means():
    k, d = 5, 16
    head = GMMHead(k, d)
    params = torch.randn(2, 7, head.param_dim)
    torch.testing.assert_close(head.predict(params), reference_mixture(params, k, d).mean)
