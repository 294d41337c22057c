"""``DivotLLM``: Mistral (+ LoRA) with an input module for video features, an output
module to the video head's per-token parameters (GMMs or code logits, ``heads.py``), and
the losses of both tasks. A clip is N feature tokens for the tokenizer and M tokens in
the sequence (``model.resampler``, ``resampler.py``: M = N token by token, or M learned
queries).

One batch may mix comprehension samples (video features written over frame-token
placeholders, LM loss on the text) and generation samples (query tokens whose final
hidden states predict the target features through the video head): every step indexes per
sample, so nothing assumes the whole batch shares one task (the reference does).

Batch keys (all ``(B, ...)``; masks are bool unless stated):

* ``input_ids (B, T)`` long, right-padded;
* ``attention_mask (B, T)`` long: 1 causal, 0 padding, -1 generation query;
* ``labels (B, T)`` long, -100 where not supervised;
* ``video_feats (B, C, N, D)``: tokenizer features of up to C clips per sample;
* ``embeds_cmp_mask (B, C)``: clip is a comprehension input;
* ``embeds_gen_mask (B, C)``: clip is a generation target;
* ``ids_cmp_mask (B, T)``: placeholder positions, M per comprehension clip, in clip order;
* ``ids_gen_mask (B, T)``: query positions, M per generation clip, in clip order.
"""

from __future__ import annotations

from dataclasses import dataclass

import peft
import torch
import torch.nn.functional as F
from torch import nn
from transformers import MistralForCausalLM
from transformers.utils import is_torch_flex_attn_available

from divot_llm.config.schema import ResamplerConfig
from divot_llm.model.attention import (
    EAGER_DENSE,
    FLASH_VARLEN,
    FLEX,
    KERNEL_IMPLEMENTATION,
    SDPA_DENSE,
    AttentionLayout,
    additive_mask,
    attention_kernel,
)
from divot_llm.model.heads import VideoHead
from divot_llm.model.resampler import build_resamplers, llm_tokens
from divot_llm.text.templates import IGNORE_INDEX, PADDING, QUERY


@dataclass
class DivotOutput:
    """Losses of one batch. Batch losses average over tokens (supervised text tokens for
    the LM loss, query tokens for the head's loss); per-sample losses average over each
    sample's own tokens and are 0 for a sample without any. ``gmm_loss`` keeps its name
    (logs, reports and checkpoints read it) whatever the head: it is the generation head's
    loss, the GMM NLL or the code cross-entropy."""

    total_loss: torch.Tensor  # () lm_loss_scale·lm + gmm_loss_scale·gmm
    lm_loss: torch.Tensor  # ()
    gmm_loss: torch.Tensor  # () the video head's NLL per predicted feature token
    lm_loss_per_sample: torch.Tensor  # (B,)
    gmm_loss_per_sample: torch.Tensor  # (B,)


class DivotLLM(nn.Module):
    """The Divot-LLM "agent".

    Args:
        llm: ``MistralForCausalLM`` with the Divot vocabulary, optionally wrapped by peft.
        feature_tokens: N, the video tokenizer's feature tokens per clip (64 for Divot).
        feature_dim: D, the tokenizer's feature dim (256 for Divot).
        video_head: The video head (``build_video_head``; its ``dim`` must equal
            ``feature_dim``): it makes the input and output modules.
        resampler: ``model.resampler``: the LLM's tokens per clip M
            (``self.tokens_per_clip``) and the modules around the head's.
        lm_loss_scale: Weight of the LM cross-entropy in ``total_loss``.
        gmm_loss_scale: Weight of the video head's loss in ``total_loss``.
        train_input_proj: Train the input module (frozen in SFT-gen).
        train_output_proj: Train the output module (frozen in SFT-comp).
        attn_implementation: ``llm.attn_implementation`` (see ``attention_kernel``); None:
            the backbone's own.
    """

    def __init__(
        self,
        llm: MistralForCausalLM | peft.PeftModel,
        *,
        feature_tokens: int,
        feature_dim: int,
        video_head: VideoHead,
        resampler: ResamplerConfig,
        lm_loss_scale: float = 1.0,
        gmm_loss_scale: float = 1.0,
        train_input_proj: bool = True,
        train_output_proj: bool = True,
        attn_implementation: str | None = None,
    ):
        super().__init__()
        if video_head.dim != feature_dim:
            raise ValueError(f"video head dim {video_head.dim} must equal the feature dim {feature_dim}")
        self.llm = llm
        self.feature_tokens = feature_tokens  # N: features per clip
        self.tokens_per_clip = llm_tokens(resampler, feature_tokens)  # M: sequence tokens per clip
        self.feature_dim = feature_dim
        self.video_head = video_head
        self.lm_loss_scale = lm_loss_scale
        self.gmm_loss_scale = gmm_loss_scale
        hidden = self.causal_lm.config.hidden_size
        # (G, N, D) -> (G, M, H) and (G, M, H) -> (G, N, P). The attribute names are the key
        # prefixes of the release's agent/ file (and of the reference's code).
        modules = build_resamplers(resampler, video_head, hidden, feature_tokens)
        self.input_resampler, self.output_resampler = modules
        self.input_resampler.requires_grad_(train_input_proj)
        self.output_resampler.requires_grad_(train_output_proj)
        # What llm.attn_implementation asked for; hidden_states picks each batch's kernel.
        self.attn_implementation: str = attn_implementation or self.causal_lm.config._attn_implementation
        self.last_attention_kernel: str = ""  # the kernel of the latest forward (benchmarks print it)

    # ------------------------------------------------------------------ parts

    @property
    def causal_lm(self) -> MistralForCausalLM:
        """The transformers model under any peft wrapper (LoRA layers stay inside it)."""
        return self.llm.get_base_model() if isinstance(self.llm, peft.PeftModel) else self.llm

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def merge_lora(self) -> None:
        """Fold the LoRA adapters (and trained norm copies) into plain weights, in place."""
        if isinstance(self.llm, peft.PeftModel):
            self.llm = self.llm.merge_and_unload()

    def projection_state_dict(self) -> dict[str, torch.Tensor]:
        """The input and output modules' tensors of the release's ``agent/`` file, by their
        names (the GMM head's 8 projection tensors)."""
        return {
            k: v
            for k, v in self.state_dict().items()
            if k.startswith(("input_resampler.", "output_resampler."))
        }

    # ------------------------------------------------------------------ forward pieces

    def embed(
        self,
        input_ids: torch.Tensor,
        video_feats: torch.Tensor | None = None,
        embeds_cmp_mask: torch.Tensor | None = None,
        ids_cmp_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings ``(B, T, H)`` with projected comprehension clips written over
        their M placeholders each (clip order = token order within a sample).

        Raises:
            ValueError: a sample's placeholder count is not M x its comprehension clips.
        """
        embeds_bth = self.llm.get_input_embeddings()(input_ids)
        if video_feats is None or embeds_cmp_mask is None or not embeds_cmp_mask.any():
            idle = _idle_head_term(self.input_resampler, (self.feature_tokens, self.feature_dim), embeds_bth)
            return embeds_bth if idle is None else embeds_bth + idle.to(embeds_bth.dtype)
        video_feats, embeds_cmp_mask = _with_clip_dim(video_feats, embeds_cmp_mask)
        _check_counts("comprehension placeholder", ids_cmp_mask, embeds_cmp_mask, self.tokens_per_clip)
        clips_gnd = video_feats[embeds_cmp_mask]  # (G, N, D) in (sample, clip) order
        clips_gmh = self.input_resampler(clips_gnd.to(embeds_bth.dtype))  # (G, M, H)
        return embeds_bth.masked_scatter(ids_cmp_mask.unsqueeze(-1), clips_gmh)

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states ``(B, T, H)``; query blocks attend bidirectionally.

        ``segment_ids``/``position_ids`` (B, T) describe packed rows: each segment is one
        sample that attends only to itself, with positions restarting at 0. The kernel is
        chosen per batch (``attention_kernel``) and recorded in ``last_attention_kernel``.
        """
        config = self.causal_lm.config
        flash = self.attn_implementation == "flash_attention_2"
        kernel = attention_kernel(
            self.attn_implementation,
            on_gpu=inputs_embeds.device.type == "cuda",
            flex_available=is_torch_flex_attn_available(),
            has_query_blocks=bool((attention_mask == QUERY).any()),
            packed=segment_ids is not None,
            padded=flash and bool((attention_mask == PADDING).any()),  # a sync only flash needs
        )
        self.last_attention_kernel = kernel
        resting = config._attn_implementation
        config._attn_implementation = KERNEL_IMPLEMENTATION[kernel]
        try:
            return self._decoder_forward(kernel, inputs_embeds, attention_mask, segment_ids, position_ids)
        finally:
            # With autograd recording, the kernel's implementation stays on the config: a
            # checkpointed layer recomputed in backward reads it again (before any other
            # forward). Without, the backbone gets its own back (text generation).
            if not torch.is_grad_enabled():
                config._attn_implementation = resting

    def _decoder_forward(
        self,
        kernel: str,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        segment_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """The decoder's final hidden states through ``kernel`` (already set on the config)."""
        config = self.causal_lm.config
        packed = segment_ids is not None
        batch, seq_len, hidden = inputs_embeds.shape
        if kernel == FLASH_VARLEN and packed:
            # One flattened row: transformers derives the variable-length sequences from
            # position_ids restarting at 0 (each padding token is a 1-token sequence).
            out = self.causal_lm.model(
                inputs_embeds=inputs_embeds.reshape(1, batch * seq_len, hidden),
                position_ids=position_ids.reshape(1, batch * seq_len),
                use_cache=False,
            )
            return out.last_hidden_state.reshape(batch, seq_len, hidden)
        if kernel in (FLEX, SDPA_DENSE, EAGER_DENSE):
            layout = AttentionLayout.from_batch(
                attention_mask, self.tokens_per_clip, config.sliding_window, segment_ids
            )
            if kernel == FLEX:
                mask = layout.block_mask()
            elif kernel == SDPA_DENSE:
                mask = layout.dense()  # bool: True = attend
            else:
                mask = additive_mask(layout.dense(), inputs_embeds.dtype)
        else:
            mask = (attention_mask != PADDING).long()  # transformers builds the causal mask
        out = self.causal_lm.model(
            inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def query_head_params(self, hidden_bth: torch.Tensor, ids_gen_mask: torch.Tensor) -> torch.Tensor:
        """Video head parameters ``(G, N, P)`` of G clips, in order, from their M query
        positions each; the hidden state of a query itself is used, with no shift."""
        hidden_gmh = hidden_bth[ids_gen_mask].reshape(-1, self.tokens_per_clip, hidden_bth.shape[-1])
        return self.output_resampler(hidden_gmh)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        video_feats: torch.Tensor | None = None,
        embeds_cmp_mask: torch.Tensor | None = None,
        embeds_gen_mask: torch.Tensor | None = None,
        ids_cmp_mask: torch.Tensor | None = None,
        ids_gen_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> DivotOutput:
        """Losses of a batch (keys described in the module docstring). With sequence
        packing, ``segment_ids``/``position_ids`` (B, T) mark the samples of each row and
        the per-sample losses are per row.

        Raises:
            ValueError: mask counts disagree with M x clips for some sample.
        """
        embeds_cmp_mask, embeds_gen_mask, ids_cmp_mask, ids_gen_mask = (
            None if m is None else m.bool()
            for m in (embeds_cmp_mask, embeds_gen_mask, ids_cmp_mask, ids_gen_mask)
        )
        embeds_bth = self.embed(input_ids, video_feats, embeds_cmp_mask, ids_cmp_mask)
        hidden_bth = self.hidden_states(embeds_bth, attention_mask, segment_ids, position_ids)
        batch = input_ids.shape[0]

        lm_sum_b, lm_count_b = self._lm_loss_sums(hidden_bth, labels, batch)
        gmm_sum_b = lm_sum_b.new_zeros(batch)
        gmm_count_b = torch.zeros_like(lm_count_b)
        idle_output = None
        if video_feats is not None and embeds_gen_mask is not None and embeds_gen_mask.any():
            gmm_sum_b, gmm_count_b = self._gmm_loss_sums(
                hidden_bth, video_feats, embeds_gen_mask, ids_gen_mask
            )
        else:
            idle_output = _idle_head_term(
                self.output_resampler, (self.tokens_per_clip, hidden_bth.shape[-1]), hidden_bth
            )

        lm_loss = lm_sum_b.sum() / lm_count_b.sum().clamp(min=1)
        gmm_loss = gmm_sum_b.sum() / gmm_count_b.sum().clamp(min=1)
        total = self.lm_loss_scale * lm_loss + self.gmm_loss_scale * gmm_loss
        if idle_output is not None:
            total = total + idle_output
        return DivotOutput(
            total_loss=total,
            lm_loss=lm_loss,
            gmm_loss=gmm_loss,
            lm_loss_per_sample=lm_sum_b / lm_count_b.clamp(min=1),
            gmm_loss_per_sample=gmm_sum_b / gmm_count_b.clamp(min=1),
        )

    def _lm_loss_sums(
        self, hidden_bth: torch.Tensor, labels: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample sum and count of next-token cross-entropy (fp32). Logits are only
        computed where a label is supervised: generation samples supervise one or three
        tokens, so this skips almost all of the (tokens x 32262) logits."""
        if labels is None:
            counts_b = torch.zeros(batch, dtype=torch.long, device=hidden_bth.device)
            return hidden_bth.new_zeros(batch, dtype=torch.float32), counts_b
        lm_head = self.causal_lm.get_output_embeddings()
        next_labels_bt = labels[:, 1:]
        supervised_bt = next_labels_bt != IGNORE_INDEX
        logits_mv = lm_head(hidden_bth[:, :-1][supervised_bt]).float()  # (M, V)
        ce_m = F.cross_entropy(logits_mv, next_labels_bt[supervised_bt], reduction="none")
        sample_of_m = supervised_bt.nonzero()[:, 0]
        sum_b = ce_m.new_zeros(batch).index_add(0, sample_of_m, ce_m)
        return sum_b, supervised_bt.sum(dim=1)

    def _gmm_loss_sums(
        self,
        hidden_bth: torch.Tensor,
        video_feats: torch.Tensor,
        embeds_gen_mask: torch.Tensor,
        ids_gen_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample sum and count of the video head's NLL over the generated clips'
        feature tokens (fp32)."""
        video_feats, embeds_gen_mask = _with_clip_dim(video_feats, embeds_gen_mask)
        _check_counts("generation query", ids_gen_mask, embeds_gen_mask, self.tokens_per_clip)
        target_gnd = video_feats[embeds_gen_mask]  # (G, N, D)
        nll_gn = self.video_head.nll(self.query_head_params(hidden_bth, ids_gen_mask), target_gnd)
        sample_of_g = embeds_gen_mask.nonzero()[:, 0]
        sum_b = nll_gn.new_zeros(hidden_bth.shape[0]).index_add(0, sample_of_g, nll_gn.sum(dim=1))
        return sum_b, embeds_gen_mask.sum(dim=1) * self.feature_tokens


def _with_clip_dim(video_feats: torch.Tensor, clip_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept one clip per sample without the C dim: ``(B, N, D)`` + ``(B,)``."""
    if video_feats.dim() == 3:
        video_feats = video_feats.unsqueeze(1)
    if clip_mask.dim() == 1:
        clip_mask = clip_mask.unsqueeze(1)
    return video_feats, clip_mask.bool()


def _check_counts(what: str, ids_mask: torch.Tensor | None, clip_mask_bc: torch.Tensor, n: int) -> None:
    if ids_mask is None:
        raise ValueError(f"{what} clips are present but their ids mask is missing")
    tokens_b = ids_mask.sum(dim=1)
    expected_b = clip_mask_bc.sum(dim=1) * n
    bad = (tokens_b != expected_b).nonzero()[:, 0].tolist()
    if bad:
        b = bad[0]
        raise ValueError(
            f"sample {b}: {int(tokens_b[b])} {what} tokens, expected {n} x {int(clip_mask_bc[b].sum())} clips "
            f"= {int(expected_b[b])} (samples with a mismatch: {bad})"
        )


def _idle_head_term(head: nn.Module, clip_shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor | None:
    """``0 x head(zeros (1, *clip_shape)).sum()`` when the head is trainable, else None:
    one clip of zeros, ``(N, D)`` into the input module or ``(M, H)`` into the output one.

    A trainable head that a batch does not use must still be called: DeepSpeed (and DDP)
    gather and reduce every trainable parameter on every rank, so a rank that skipped the
    head would leave the others waiting. The term is added where the real call would be
    (input head: in ``embed``; output head: after the LM loss) and touches the head only
    through its forward, so every rank issues the same ZeRO-3 gathers in the same order
    (reading ``head.weight`` outside a forward triggers an extra gather). Also under
    ``no_grad`` (validation): ZeRO-3 gathers on every forward, graph or not; there the
    term is a plain 0. Zeros (not the reference's randn) keep the RNG stream untouched,
    and are valid input for every head (code digit 0).
    """
    if not any(p.requires_grad for p in head.parameters()):
        return None
    dummy = torch.zeros(1, *clip_shape, dtype=like.dtype, device=like.device)
    return 0.0 * head(dummy).float().sum()
