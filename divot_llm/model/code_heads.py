"""The code heads: the LLM reads and writes FSQ codes instead of continuous features.

A discrete video tokenizer (VidTok FSQ) hands the LLM features whose dim i holds an integer
code digit in ``[0, L_i)`` stored as a float (``VideoTokenizer.feature_levels``). The
code of a position is the mixed-radix number of its digits, digit 0 least significant
(VidTok's index). Two heads, with the ``GMMHead`` interface (``dim``, ``param_dim``,
``nll``, ``sample``, ``predict``, ``input_module``, ``output_module``):

* ``FactorizedCodeHead``: one ``L_i``-way softmax per digit (``P = sum L_i``): the code's
  likelihood is the product of the digits' (exact for teacher forcing; sampled digits are
  independent given the hidden state). Input: one embedding table per digit, summed.
* ``FlatCodeHead``: one softmax over all ``prod L_i`` codes (``P = prod L_i``); input: one
  table of ``prod L_i`` rows. Kept for codebooks up to ``MAX_FLAT_CODES``: 32768 codes at
  H = 4096 are already 134M output parameters.

The head's parameters are logits, so classifier-free guidance combines them directly
(``guided_logits``). Everything scored runs in fp32.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from divot_llm.tokenizers.codes import digit_ids, digits_to_index, index_to_digits

MAX_FLAT_CODES = 32768
# std of a clip token's input embedding at init: transformers' initializer_range, the scale
# new token rows start at (nn.Embedding's default of 1 would dwarf the text embeddings)
EMBED_INIT_STD = 0.02


def digit_offsets(levels: Sequence[int]) -> list[int]:
    """Where each digit's logits (and embedding rows) start in a factorized head:
    ``[0, L_0, L_0 + L_1, ...]``."""
    return [sum(levels[:i]) for i in range(len(levels))]


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` (1: the conditional
    logits; 0: the unconditional ones; > 1: pushed away from the unconditional)."""
    return uncond + scale * (cond - uncond)


def sample_logits(
    logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One draw per row of ``logits (..., V)`` from ``softmax(logits / temperature)``
    restricted to its ``top_k`` largest entries (0: all). Returns ``(...)`` long.

    Raises:
        ValueError: ``temperature <= 0`` or ``top_k < 0``.
    """
    if temperature <= 0 or top_k < 0:
        raise ValueError(f"sampling needs temperature > 0 and top_k >= 0, got {temperature} and {top_k}")
    logits = logits.float()
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs_rv = (logits / temperature).softmax(dim=-1).reshape(-1, logits.shape[-1])
    return torch.multinomial(probs_rv, 1, generator=generator).reshape(logits.shape[:-1])


class FactorizedCodeEmbedding(nn.Module):
    """Input module of ``fsq_factorized``: the sum of one ``(L_i, H)`` embedding per digit.
    The k tables are stacked in one weight (rows ``offset_i .. offset_i + L_i``) so that a
    lookup is one gather. ``(..., D)`` float digits -> ``(..., H)``."""

    def __init__(self, levels: Sequence[int], hidden: int):
        super().__init__()
        self.levels = list(levels)
        self.input_dim = len(levels)
        self.embedding = nn.Embedding(sum(levels), hidden)
        nn.init.normal_(self.embedding.weight, std=EMBED_INIT_STD / math.sqrt(len(levels)))  # the sum's std
        offsets = torch.tensor(digit_offsets(levels), dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)  # not a release tensor

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        rows = digit_ids(digits, self.levels) + self.offsets  # (..., D)
        return self.embedding(rows).sum(dim=-2)


class FlatCodeEmbedding(nn.Module):
    """Input module of ``fsq_flat``: one ``(prod L_i, H)`` table indexed by the code.
    ``(..., D)`` float digits -> ``(..., H)``."""

    def __init__(self, levels: Sequence[int], hidden: int):
        super().__init__()
        self.levels = list(levels)
        self.input_dim = len(levels)
        self.embedding = nn.Embedding(math.prod(levels), hidden)
        nn.init.normal_(self.embedding.weight, std=EMBED_INIT_STD)

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        return self.embedding(digits_to_index(digits, self.levels))


class _CodeHead(abc.ABC):
    """What the two code heads share: levels, sampling defaults, the output module."""

    def __init__(self, levels: Sequence[int], temperature: float = 1.0, top_k: int = 0):
        if not levels or min(levels) < 2:
            raise ValueError(f"a code head needs levels of at least 2 values each, got {list(levels)}")
        self.levels = list(levels)
        self.dim = len(self.levels)
        self.temperature = temperature
        self.top_k = top_k

    @property
    @abc.abstractmethod
    def param_dim(self) -> int:
        """P: logits per query token."""

    def output_module(self, hidden: int) -> nn.Module:
        """``(..., H) -> (..., P)`` logits: one linear layer (a softmax head's classifier)."""
        return nn.Linear(hidden, self.param_dim)

    def _check(self, params: torch.Tensor) -> torch.Tensor:
        if params.shape[-1] != self.param_dim:
            raise ValueError(f"code logits have last dim {params.shape[-1]}, expected {self.param_dim}")
        return params.float()

    def _options(self, temperature: float | None, top_k: int | None) -> tuple[float, int]:
        return (
            self.temperature if temperature is None else temperature,
            self.top_k if top_k is None else top_k,
        )


class FactorizedCodeHead(_CodeHead):
    """One softmax per digit. ``params (..., P)`` are the concatenated per-digit logits
    ``[L_0 | L_1 | ...]``, ``P = sum L_i``.

    Args:
        levels: L_i of each feature dim.
        temperature: Default sampling temperature.
        top_k: Default top-k cut per digit (0: none).
    """

    def __init__(self, levels: Sequence[int], temperature: float = 1.0, top_k: int = 0):
        super().__init__(levels, temperature, top_k)
        # (D, Lmax) positions of each digit's logits in params; padding slots point at 0 and
        # are masked to -inf, so digits of different sizes share one tensor.
        width = max(self.levels)
        start = digit_offsets(self.levels)
        slot = torch.arange(width)
        self._valid_dl = slot[None, :] < torch.tensor(self.levels)[:, None]
        self._gather_dl = torch.where(self._valid_dl, torch.tensor(start)[:, None] + slot[None, :], 0)

    @property
    def param_dim(self) -> int:
        return sum(self.levels)

    def input_module(self, hidden: int) -> nn.Module:
        return FactorizedCodeEmbedding(self.levels, hidden)

    def digit_logits(self, params: torch.Tensor) -> torch.Tensor:
        """``(..., P)`` -> ``(..., D, Lmax)`` fp32 logits, -inf beyond each digit's L_i."""
        params = self._check(params)
        gather = self._gather_dl.to(params.device)
        logits = params[..., gather]  # (..., D, Lmax)
        return logits.masked_fill(~self._valid_dl.to(params.device), float("-inf"))

    def nll(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token sum over digits of their cross-entropies (not divided by D: it is the
        code's negative log-likelihood), fp32, shape ``(...)``."""
        log_probs = self.digit_logits(params).log_softmax(dim=-1)  # (..., D, Lmax)
        ids = digit_ids(target, self.levels).unsqueeze(-1)  # (..., D, 1)
        return -log_probs.gather(-1, ids).squeeze(-1).sum(dim=-1)

    def sample(
        self,
        params: torch.Tensor,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Each digit drawn on its own (defaults: the head's temperature and top-k);
        ``(..., D)`` float digits."""
        temperature, top_k = self._options(temperature, top_k)
        # a digit with L_i <= top_k keeps all its values: its k-th largest logit is a -inf pad
        return sample_logits(self.digit_logits(params), temperature, top_k, generator).float()

    def predict(self, params: torch.Tensor) -> torch.Tensor:
        """The likeliest value of each digit, ``(..., D)`` float (= the likeliest code)."""
        return self.digit_logits(params).argmax(dim=-1).float()


class FlatCodeHead(_CodeHead):
    """One softmax over the ``prod L_i`` codes; ``params (..., P)`` are its logits.

    Raises:
        ValueError: more than ``MAX_FLAT_CODES`` codes.
    """

    def __init__(self, levels: Sequence[int], temperature: float = 1.0, top_k: int = 0):
        super().__init__(levels, temperature, top_k)
        codes = math.prod(self.levels)
        if codes > MAX_FLAT_CODES:
            raise ValueError(
                f"model.head=fsq_flat needs one softmax row per code, but levels {self.levels} make "
                f"{codes} codes (at most {MAX_FLAT_CODES}): use model.head=fsq_factorized"
            )

    @property
    def param_dim(self) -> int:
        return math.prod(self.levels)

    def input_module(self, hidden: int) -> nn.Module:
        return FlatCodeEmbedding(self.levels, hidden)

    def nll(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy of the target's code, fp32, shape ``(...)``."""
        logits = self._check(params)
        index = digits_to_index(target, self.levels)
        return F.cross_entropy(logits.flatten(0, -2), index.flatten(), reduction="none").reshape(index.shape)

    def sample(
        self,
        params: torch.Tensor,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """One code drawn per token; ``(..., D)`` float digits."""
        temperature, top_k = self._options(temperature, top_k)
        index = sample_logits(self._check(params), temperature, top_k, generator)
        return index_to_digits(index, self.levels).float()

    def predict(self, params: torch.Tensor) -> torch.Tensor:
        """The likeliest code's digits, ``(..., D)`` float."""
        return index_to_digits(self._check(params).argmax(dim=-1), self.levels).float()
