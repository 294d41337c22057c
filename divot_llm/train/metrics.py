"""Throughput accounting: FLOPs per step, MFU / HFU, peak memory.

FLOP formula (peers-and-style §2.2, PaLM appendix B convention), per micro-batch, summed
over samples ``b`` with ``T_b`` real (non-padding) tokens (with packing, each packed sample
of a row is its own ``b``: it attends only to itself):

    F_model = sum_b [ T_b * (4 * N_frozen + 6 * N_lora) + 12 * L * d * T_b^2 ]    LLM body
            + M * c_head * V * d                                               LM head
            + C_in * c_in * F_in + C_out * c_out * F_out                       projections
            + G_video * F_video + G_still * F_still                            video tokenizer

* N_frozen / N_lora: matmul weights of the decoder layers that are frozen (forward 2N +
  input-gradient 2N) / trainable (+ weight-gradient 2N). Embedding lookups are not FLOPs.
* 12·L·d·T per token is attention (QK^T and AV, forward + backward) counting the full
  T x T matrix, as PaLM and nanoGPT do; causal kernels skip about half of it.
* The LM head runs only at the M supervised positions (``DivotLLM`` never computes the
  other logits): c_head = 6 when it trains (the reference trains it), else 4.
* Projections: C_in comprehension clips x F_in, the forward FLOPs of one clip through the
  input module (x 3 trained, x 1 frozen: nothing upstream needs its gradient), C_out
  generation clips x F_out through the output module (x 3 trained, x 2 frozen), both
  counted once with ``torch.utils.flop_counter``: a token-wise MLP's 2N per token, the
  attention of learned queries (``model.resampler``), nothing for an embedding lookup. A
  trained module a batch leaves idle counts one clip (of zeros, run so that ZeRO ranks
  gather alike).
* F_video / F_still: forward FLOPs of the frozen video tokenizer for one clip (ViT
  included) and for one still (F identical frames: the ViT runs on one), measured once
  with ``torch.utils.flop_counter`` -- so any tokenizer is counted right -- times the real
  clips the step encodes (no backward: it is frozen, under no_grad). A batch of cached
  features encodes nothing and counts none.

MFU = F_model / step time / (devices x peak). HFU adds what the hardware recomputes with
activation checkpointing: one more forward of the recomputed fraction r of the decoder
layers (``model.llm.checkpoint_every``), r * [T_b * 2 * (N_frozen + N_lora) + 4 * L * d * T_b^2].
Peak: a table of dense bf16 GPU peaks (or ``train.peak_tflops``); on a CPU there is no
published peak, so the ratio is against a fp32 GEMM measured at start-up and labelled as
such -- a sanity number, not a hardware utilisation claim.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from divot_llm.tokenizers import VideoTokenizer, still_clips

# Dense (non-sparse) bf16 tensor-core peaks, FLOP/s, matched on the CUDA device name.
GPU_BF16_PEAK = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
)


@dataclass(frozen=True)
class TokenizerFlops:
    """Forward FLOPs of the frozen video tokenizer per clip of distinct frames and per
    still clip (identical frames, which the tokenizer encodes once: ``DivotTokenizer.
    frame_patches``); zero for a run from a feature cache, which encodes nothing."""

    video: float = 0.0
    still: float = 0.0

    def batch_flops(self, batch: dict[str, torch.Tensor]) -> float:
        """The tokenizer's FLOPs for a loader batch: its real clips when it brings
        ``frames`` (G, F, 3, S, S) -- stills told apart as the tokenizer does -- and
        none when it brings cached ``video_feats``."""
        if "frames" not in batch:
            return 0.0
        frames_gf = batch["frames"]  # only the real clips (collate gathers them)
        stills = float(still_clips(frames_gf).sum())
        return (frames_gf.shape[0] - stills) * self.video + stills * self.still


@dataclass(frozen=True)
class FlopModel:
    """Parameter counts the formula needs; build with ``from_model`` before ZeRO-3
    partitions the parameters (afterwards their shapes are the local shards)."""

    layers: int
    hidden: int
    vocab: int
    frozen_body: int
    lora_body: int
    head_trainable: bool
    input_clip_flops: float  # forward FLOPs of one clip through the input module
    input_proj_trainable: bool
    output_clip_flops: float  # and through the output module
    output_proj_trainable: bool
    tokenizer: TokenizerFlops
    recompute: float  # fraction of the decoder layers recomputed in backward (activation checkpointing)

    @classmethod
    def from_model(cls, model, tokenizer: TokenizerFlops, recompute: float) -> FlopModel:
        """Counts from a ``DivotLLM`` (real or on the meta device)."""
        config = model.causal_lm.config
        head = model.causal_lm.get_output_embeddings().weight
        skip = {id(model.causal_lm.get_input_embeddings().weight), id(head)}
        frozen = lora = 0
        for p in model.llm.parameters():
            if p.ndim == 2 and id(p) not in skip:
                if p.requires_grad:
                    lora += p.numel()
                else:
                    frozen += p.numel()
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            vocab=head.shape[0],
            frozen_body=frozen,
            lora_body=lora,
            head_trainable=head.requires_grad,
            input_clip_flops=_clip_flops(model.input_resampler, (model.feature_tokens, model.feature_dim)),
            input_proj_trainable=any(p.requires_grad for p in model.input_resampler.parameters()),
            output_clip_flops=_clip_flops(
                model.output_resampler, (model.tokens_per_clip, config.hidden_size)
            ),
            output_proj_trainable=any(p.requires_grad for p in model.output_resampler.parameters()),
            tokenizer=tokenizer,
            recompute=recompute,
        )

    def batch_flops(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        """(model FLOPs, hardware FLOPs) of one micro-batch (CPU tensors of the loader)."""
        tokens_b = (batch["attention_mask"] != 0).sum(dim=1).double()
        squared_lengths = sample_lengths_squared(batch)  # attention grows with each sample's T^2
        body = float((tokens_b * (4 * self.frozen_body + 6 * self.lora_body)).sum())
        attention = 12 * self.layers * self.hidden * squared_lengths
        supervised = float((batch["labels"][:, 1:] != -100).sum())
        head = supervised * (6 if self.head_trainable else 4) * self.vocab * self.hidden
        proj = _module_flops(batch["embeds_cmp_mask"], self.input_proj_trainable, 1, self.input_clip_flops)
        proj += _module_flops(batch["embeds_gen_mask"], self.output_proj_trainable, 2, self.output_clip_flops)
        model_flops = body + attention + head + proj + self.tokenizer.batch_flops(batch)
        hardware = model_flops
        if self.recompute:
            recomputed = float((tokens_b * 2 * (self.frozen_body + self.lora_body)).sum())
            recomputed += 4 * self.layers * self.hidden * squared_lengths
            hardware += self.recompute * recomputed
        return model_flops, hardware


def sample_lengths_squared(batch: dict[str, torch.Tensor]) -> float:
    """Sum over samples of T_b^2 (real tokens): a packed row (``segment_ids``, 0 =
    padding) holds several samples, each attending only to itself, so its attention work
    is the sum of its segments' squares, not the square of the row."""
    real_bt = batch["attention_mask"] != 0
    if "segment_ids" not in batch:
        return float((real_bt.sum(dim=1).double() ** 2).sum())
    segment_bt = batch["segment_ids"].long()
    rows, _ = segment_bt.shape
    slots = int(segment_bt.max()) + 1
    flat_bt = torch.arange(rows)[:, None] * slots + segment_bt  # (row, segment) -> one index
    lengths = torch.bincount(flat_bt[real_bt & (segment_bt > 0)], minlength=rows * slots).double()
    return float((lengths**2).sum())


def _module_flops(clips_bc: torch.Tensor, trainable: bool, frozen_factor: int, clip_flops: float) -> float:
    """FLOPs of a video module over a batch's clips: forward, plus weight and input
    gradients when it trains (x 3), else ``frozen_factor`` (a frozen output module still
    passes gradients back to the LLM). A trainable module the batch leaves idle still runs
    one clip of zeros (``DivotLLM``'s idle term: every rank gathers it under ZeRO)."""
    clips = float(clips_bc.sum())
    if trainable:
        return 3 * max(clips, 1.0) * clip_flops
    return frozen_factor * clips * clip_flops


def _clip_flops(module: nn.Module, clip_shape: tuple[int, int]) -> float:
    """Forward FLOPs of one clip of zeros ``(1, *clip_shape)`` through ``module``, counted by
    torch: a token-wise module's matmuls over each token, learned queries' attention too
    (``model.resampler``), an embedding lookup nothing."""
    weight = next(module.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, *clip_shape, dtype=weight.dtype, device=weight.device))
    return float(counter.get_total_flops())


def tokenizer_flops(tokenizer: VideoTokenizer, device: torch.device | str) -> TokenizerFlops:
    """Forward FLOPs of one clip with distinct frames and of one still clip through
    ``tokenizer``, counted by torch (matmuls, convolutions, attention)."""
    frames, size = tokenizer.frames_per_clip, tokenizer.input_size
    still = torch.zeros(1, frames, 3, size, size, device=device, dtype=tokenizer.dtype)
    ramp = torch.linspace(-1, 1, frames, device=device, dtype=tokenizer.dtype)
    video = still + ramp.view(1, frames, 1, 1, 1)  # every frame different
    return TokenizerFlops(video=_forward_flops(tokenizer, video), still=_forward_flops(tokenizer, still))


def _forward_flops(tokenizer: VideoTokenizer, clip: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        tokenizer.encode(clip)
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------ peaks


@dataclass(frozen=True)
class Peak:
    flops: float  # per device, FLOP/s
    source: str  # where the number comes from, printed with MFU


def device_peak(device: torch.device, dtype: torch.dtype, override_tflops: float | None) -> Peak | None:
    """The per-device peak MFU is measured against (None: unknown, MFU not reported)."""
    if override_tflops:
        return Peak(override_tflops * 1e12, "train.peak_tflops")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if dtype == torch.bfloat16:
            for key, flops in GPU_BF16_PEAK:
                if key in name:
                    return Peak(flops, f"{name} dense bf16 spec")
        return None
    return Peak(measure_cpu_gemm_flops(), "measured CPU fp32 GEMM (not a hardware spec)")


def measure_cpu_gemm_flops(size: int = 512, repeats: int = 5) -> float:
    """Best-of-``repeats`` fp32 matmul throughput on this process's threads."""
    a, b = torch.randn(size, size, generator=torch.Generator().manual_seed(0)), torch.ones(size, size)
    a @ b  # warm-up (allocations, thread pool)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# ------------------------------------------------------------------------ memory


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory of this process, or its peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
