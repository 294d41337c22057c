"""Video-LaVIT's LLM: any Hugging Face causal LM over text + keyframe codes + motion codes.

The vocabulary is ``LaVITVocab``'s (text, ``[IMG]``/``[/IMG]``, V visual codes,
``[MOV]``/``[/MOV]``, M motion codes) on the text tokenizer's base vocabulary: the
embeddings and lm_head grow to ``vocab.size`` rows (new rows from the mean, as
``backbone.resize_vocab`` grows Divot's) unless the model already has them (a released
``language_model/``: 49412). The model is a LLaMA (the release: ``LlamaForCausalLM`` from
a local ``language_model/`` folder, or a random one from ``model.llm``'s shape fields) or
our Mistral backbone (``model.lavit.family=mistral``), trained whole or through LoRA
(``model.lora.enabled``: peft, ``model/lora.py``).

The loss is next-token cross-entropy over the supervised ids (``labels``), averaged over
them; ``text_loss`` / ``visual_loss`` / ``motion_loss`` split it by the kind of the target
id (markers count with their codes: ``[IMG]``/``[/IMG]`` visual, ``[MOV]``/``[/MOV]``
motion), each over its own targets (0 where a batch has none), for logging.

``save_pretrained`` writes an HF folder with the grown vocabulary (LoRA merged), the text
tokenizer and our sidecar ``lavit_llm_config.json`` (the vocabulary layout): the files the
release's ``language_model/`` holds, less ``visual_weight.bin`` (the release writer adds
that), so upstream's ``LlamaForCausalLM.from_pretrained`` and ``LlamaTokenizer`` read it.
``LaVITLLM.from_pretrained`` reads ours or a released folder (no sidecar: the release's
16384 / 1024 layout).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from divot_llm.config.schema import LaVITModelConfig, ModelConfig
from divot_llm.model.backbone import backbone_attn_implementation, load_backbone, resize_vocab
from divot_llm.model.lora import apply_lora
from divot_llm.text.lavit_tokenizer import LaVITTextTokenizer
from divot_llm.text.lavit_vocab import LaVITVocab
from divot_llm.text.templates import IGNORE_INDEX

SIDECAR = "lavit_llm_config.json"  # ours, next to the HF files: the vocabulary layout


@dataclass
class LaVITOutput:
    loss: torch.Tensor  # scalar, differentiable: mean CE over supervised ids
    text_loss: torch.Tensor  # scalars, detached: the same mean over each kind of target
    visual_loss: torch.Tensor
    motion_loss: torch.Tensor
    logits: torch.Tensor | None = None  # (B, T, vocab.size), when asked for


def vocab_of(model_cfg: ModelConfig, text_size: int) -> LaVITVocab:
    lavit = model_cfg.lavit
    return LaVITVocab(text_size, lavit.visual_codes, lavit.motion_codes, lavit.motion_tokens)


def llama_config(model_cfg: ModelConfig) -> LlamaConfig:
    """A transformers ``LlamaConfig`` from ``model.llm``'s shape fields (base vocabulary)."""
    llm = model_cfg.llm
    return LlamaConfig(
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads,
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta},
        attn_implementation=backbone_attn_implementation(llm.attn_implementation),
        tie_word_embeddings=False,
    )


class LaVITLLM(nn.Module):
    """A causal LM (optionally peft-wrapped) over ``vocab``.

    Args:
        llm: the HF causal LM, its embeddings already ``vocab.size`` rows.
        vocab: the id layout.
        config: ``model.lavit`` (keyframe input, generation bounds).
    """

    def __init__(self, llm: PreTrainedModel, vocab: LaVITVocab, config: LaVITModelConfig):
        super().__init__()
        rows = llm.get_input_embeddings().weight.shape[0]
        if rows != vocab.size:
            raise ValueError(f"the LLM has {rows} embedding rows, the LaVIT vocabulary {vocab.size}")
        self.llm, self.vocab, self.config = llm, vocab, config

    @property
    def base_model(self) -> PreTrainedModel:
        """The HF model without any peft wrapper."""
        return self.llm.get_base_model() if isinstance(self.llm, peft.PeftModel) else self.llm

    @property
    def hidden_size(self) -> int:
        return self.base_model.config.hidden_size

    def input_embeds(
        self, input_ids: torch.Tensor, keyframe_feats: torch.Tensor | None, visual_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings ``(B, T, H)``; with ``keyframe_feats`` ``(P, H)`` (the keyframe
        tokenizer's features, projected to the LLM width) in place of the P visual-code ids
        that ``visual_mask`` ``(B, T)`` marks, in row-major order."""
        embeds_bth = self.llm.get_input_embeddings()(input_ids)
        if keyframe_feats is None:
            return embeds_bth
        if visual_mask is None or int(visual_mask.sum()) != keyframe_feats.shape[0]:
            got = None if visual_mask is None else int(visual_mask.sum())
            raise ValueError(f"{keyframe_feats.shape[0]} keyframe features for {got} visual-code positions")
        embeds_bth = embeds_bth.clone()
        embeds_bth[visual_mask] = keyframe_feats.to(embeds_bth.dtype)
        return embeds_bth

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        keyframe_feats: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> LaVITOutput:
        """The LM loss of a batch (``(B, T)`` each). A packed batch brings ``segment_ids``
        (1-based per sample, 0 padding) and ``position_ids`` restarting per sample: each
        sample attends only to itself (a dense ``(B, 1, T, T)`` mask)."""
        if keyframe_feats is not None and self.config.keyframe_input != "features":
            raise ValueError("keyframe features given but model.lavit.keyframe_input is 'codes'")
        embeds = self.input_embeds(input_ids, keyframe_feats, visual_mask)
        mask = attention_mask
        if segment_ids is not None:
            mask = packed_mask(segment_ids)
        base = self.base_model
        # the decoder alone: the lm_head then runs on the supervised positions only (most
        # of a comprehension sequence is its clips' ids, never targets)
        hidden_bth = base.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids)[
            0
        ]
        head = base.get_output_embeddings()
        logits = head(hidden_bth) if return_logits or labels is None else None
        if labels is None:
            zero = hidden_bth.new_zeros(())
            return LaVITOutput(zero, zero, zero, zero, logits)
        targets_bt = labels[:, 1:]
        kept_bt = targets_bt != IGNORE_INDEX
        logits_nv = head(hidden_bth[:, :-1][kept_bt])  # (N, V): the N supervised positions
        return self.losses(logits_nv, targets_bt[kept_bt], logits)

    def losses(
        self, logits_nv: torch.Tensor, targets_n: torch.Tensor, logits: torch.Tensor | None = None
    ) -> LaVITOutput:
        """Mean cross-entropy of the N supervised positions' logits, and per target kind."""
        ce_n = F.cross_entropy(logits_nv.float(), targets_n, reduction="none")
        v = self.vocab
        kinds = {
            "text": targets_n < v.text_size,
            "visual": (targets_n >= v.img_start) & (targets_n < v.mov_start),
            "motion": (targets_n >= v.mov_start) & (targets_n < v.size),
        }
        # an empty batch of targets gives 0 (not NaN), still connected to the graph
        loss = ce_n.sum() / max(ce_n.numel(), 1)
        split = {k: ((ce_n * m).sum() / m.sum().clamp(min=1)).detach() for k, m in kinds.items()}
        return LaVITOutput(loss, split["text"], split["visual"], split["motion"], logits)

    @torch.no_grad()
    def generate(self, **kwargs) -> torch.Tensor:
        """``transformers`` generation on the wrapped model (ids in, ids out)."""
        return self.llm.generate(**kwargs)

    # ------------------------------------------------------------------ save / load

    def merged(self) -> PreTrainedModel:
        """The HF model with any LoRA merged in (a copy; this module is left as it is)."""
        if isinstance(self.llm, peft.PeftModel):
            return copy.deepcopy(self.llm).merge_and_unload()
        return self.llm

    def save_pretrained(
        self, out_dir: str | os.PathLike, text_tokenizer: LaVITTextTokenizer | None = None
    ) -> Path:
        """An HF folder with the grown vocabulary (a released ``language_model/`` less its
        ``visual_weight.bin``), the text tokenizer's files and our sidecar."""
        out = Path(out_dir)
        model = self.merged()
        model.save_pretrained(out, safe_serialization=True)
        if text_tokenizer is not None:
            text_tokenizer.save_pretrained(out)
        sidecar = {"vocab": asdict(self.vocab), "lavit": asdict(self.config)}
        (out / SIDECAR).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        config: LaVITModelConfig | None = None,
    ) -> LaVITLLM:
        """Our ``save_pretrained`` folder, or a released ``language_model/`` (no sidecar: the
        release's layout, its text vocabulary what the embeddings leave). ``config``
        overrides the sidecar's generation settings (not the layout)."""
        folder = Path(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        vocab, saved = release_vocab(model.get_input_embeddings().weight.shape[0]), LaVITModelConfig()
        if (folder / SIDECAR).is_file():
            sidecar = json.loads((folder / SIDECAR).read_text())
            vocab, saved = LaVITVocab(**sidecar["vocab"]), LaVITModelConfig(**sidecar["lavit"])
        return cls(model, vocab, config or saved)


def release_vocab(rows: int) -> LaVITVocab:
    """The layout of a released LLM with ``rows`` embedding rows (16384 visual and 1024
    motion codes on the text vocabulary below them)."""
    extra = LaVITVocab(1).size - 1
    if rows <= extra:
        raise ValueError(f"{rows} embedding rows cannot hold LaVIT's {extra} visual and motion ids")
    return LaVITVocab(rows - extra)


def packed_mask(segment_ids_bt: torch.Tensor) -> torch.Tensor:
    """``(B, 1, T, T)`` bool: a key is visible to a query of the same sample at or before
    it; padding (segment 0) sees only itself (its outputs are never supervised)."""
    seg = segment_ids_bt
    same = seg[:, :, None] == seg[:, None, :]
    causal = torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool, device=seg.device).tril()
    eye = torch.eye(seg.shape[1], dtype=torch.bool, device=seg.device)
    return ((same & causal & (seg[:, None, :] > 0)) | eye)[:, None]


def build_lavit_llm(model_cfg: ModelConfig, text_size: int, dtype: torch.dtype = torch.float32) -> LaVITLLM:
    """The LLM of ``model`` (``model.lavit`` set): from ``model.llm.path`` (an HF folder, e.g.
    a released or our ``language_model/``; any causal LM) or random from the shape fields
    (``model.lavit.family``), grown to the vocabulary on ``text_size`` text ids (the text
    tokenizer's), with LoRA when ``model.lora.enabled`` (else every weight trains).

    Raises:
        ValueError: ``model.lavit`` unset; a folder whose vocabulary is neither the text
            tokenizer's nor the whole LaVIT one.
    """
    if model_cfg.lavit is None:
        raise ValueError("model.lavit is not set: choose a LaVIT model (model=lavit_tiny | lavit_7b)")
    vocab = vocab_of(model_cfg, text_size)
    llm_cfg = model_cfg.llm
    if llm_cfg.path is not None:
        implementation = backbone_attn_implementation(llm_cfg.attn_implementation)
        model = AutoModelForCausalLM.from_pretrained(
            llm_cfg.path, dtype=dtype, attn_implementation=implementation
        )
    elif model_cfg.lavit.family == "mistral":
        model = load_backbone(llm_cfg, dtype=dtype)
    else:
        model = LlamaForCausalLM(llama_config(model_cfg)).to(dtype)
    rows = model.get_input_embeddings().weight.shape[0]
    if rows not in (text_size, vocab.size):
        raise ValueError(
            f"the LLM has {rows} vocabulary rows: neither the text tokenizer's {text_size} nor the LaVIT "
            f"vocabulary's {vocab.size} (model.lavit's visual / motion code counts)"
        )
    resize_vocab(model, vocab.size, llm_cfg.new_lm_head_rows_scale)
    if model_cfg.lora.enabled:
        model = apply_lora(model, model_cfg.lora)
    else:
        model.requires_grad_(True)
    return LaVITLLM(model, vocab, model_cfg.lavit)
