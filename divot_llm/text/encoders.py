"""Frozen text encoders: one conditioning vector per caption (text-to-video).

``stage.text_encoder`` picks one (``TextEncoderConfig``); each loads only from a local
folder and is never trained:

* ``bert``: a BERT model + tokenizer folder (the seed's ``use_bert_text_cond`` used
  bert-base-cased). As the seed, the last hidden states are averaged over every real token
  except ``[CLS]`` (``[SEP]`` included); the seed's ``[CLS]`` option is not offered.
* ``clip``: a CLIP text tower (a ``CLIPTextModel`` or a whole CLIP folder) + its
  tokenizer; the pooled output, the final-norm hidden state of the end-of-text token.
* ``llm_mean``: the input token embeddings of a Hugging Face causal LM (read alone from
  its safetensors, nothing else is loaded), averaged over the caption's tokens. Captions
  are encoded by our text tokenizer as user text, so a control-token string inside a
  caption is ordinary text; the tokenizer is the folder's own when it holds a
  ``tokenizer.model`` (a release's ``llm/``), else the one ``model.tokenizer_path: null``
  gives.

Tokenizers of all three split special-token strings of a caption like any other text.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import BertModel, BertTokenizer, CLIPTextModel, CLIPTokenizer

from divot_llm.config.paths import HF_CONFIG, PathError, check_path
from divot_llm.config.schema import PathKind, TextEncoderConfig
from divot_llm.text.tokenizer import SP_MODEL_FILE, DivotTextTokenizer, load_text_tokenizer

SAFETENSORS_INDEX = "model.safetensors.index.json"
EMBEDDING_KEYS = ("model.embed_tokens.weight", "embed_tokens.weight")  # causal LM, bare model
MEAN_EPS = 1e-8  # the seed's: an all-padding row averages to zeros


class FrozenTextEncoder(nn.Module):
    """Captions -> ``(B, D)`` float32 vectors, deterministic, without gradients.

    Always in eval mode (``train()`` is a no-op, so a parent's ``train()`` turns no
    dropout on) and its parameters never require grad.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim  # D

    def freeze(self) -> FrozenTextEncoder:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode(self, captions: list[str]) -> torch.Tensor:
        """One vector per caption: ``(B, D)`` float32 on this module's device."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a list of strings")
        if not captions:
            return torch.zeros(0, self.dim, device=self.device)
        # float32 whatever the caller's autocast (a bf16 training step): the vectors are data
        with torch.autocast(self.device.type, enabled=False):
            return self._encode(list(captions)).float()

    def _encode(self, captions: list[str]) -> torch.Tensor:
        raise NotImplementedError


def masked_mean(states_bnd: torch.Tensor, mask_bn: torch.Tensor) -> torch.Tensor:
    """Mean of ``states_bnd`` (B, N, D) over the positions where ``mask_bn`` (B, N) is set."""
    mask_bn1 = mask_bn.unsqueeze(-1).to(states_bnd.dtype)
    return (states_bnd * mask_bn1).sum(dim=1) / (mask_bn1.sum(dim=1) + MEAN_EPS)


class HFTextEncoder(FrozenTextEncoder):
    """A transformers text model and its tokenizer; subclasses say how its output is pooled."""

    def __init__(self, model: BertModel | CLIPTextModel, tokenizer, max_length: int):
        super().__init__(model.config.hidden_size)
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = min(max_length, model.config.max_position_embeddings)
        self.freeze()

    def _encode(self, captions: list[str]) -> torch.Tensor:
        batch = _tokenize(self.tokenizer, captions, self.max_length, self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self.pool(out, batch["attention_mask"])

    def pool(self, out, mask_bn: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` from the model's output and the real-token mask ``(B, N)``."""
        raise NotImplementedError


class BertTextEncoder(HFTextEncoder):
    def pool(self, out, mask_bn: torch.Tensor) -> torch.Tensor:
        # the seed's pooling: every real token but [CLS] (position 0)
        return masked_mean(out.last_hidden_state[:, 1:], mask_bn[:, 1:])


class ClipTextEncoder(HFTextEncoder):
    def pool(self, out, mask_bn: torch.Tensor) -> torch.Tensor:
        return out.pooler_output  # (B, D): the end-of-text token's hidden state


class LlmMeanTextEncoder(FrozenTextEncoder):
    def __init__(self, embeddings_vd: torch.Tensor, tokenizer: DivotTextTokenizer, max_length: int):
        vocab, dim = embeddings_vd.shape
        super().__init__(dim)
        if tokenizer.base_vocab_size > vocab:
            raise ValueError(
                f"the text tokenizer has {tokenizer.base_vocab_size} text tokens but the LLM's "
                f"input embeddings only {vocab} rows: they do not belong together"
            )
        self.embed = nn.Embedding.from_pretrained(embeddings_vd.float(), freeze=True)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.freeze()

    def _encode(self, captions: list[str]) -> torch.Tensor:
        ids = [
            self.tokenizer.encode_text(c)[: self.max_length] for c in captions
        ]  # user text: no control ids
        longest = max(1, *map(len, ids))
        ids_bn = torch.zeros(len(ids), longest, dtype=torch.long)
        mask_bn = torch.zeros(len(ids), longest, dtype=torch.bool)
        for row, row_ids in enumerate(ids):
            ids_bn[row, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
            mask_bn[row, : len(row_ids)] = True
        return masked_mean(self.embed(ids_bn.to(self.device)), mask_bn.to(self.device))


def _tokenize(
    tokenizer, captions: list[str], max_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    # split_special_tokens: "[SEP]" or "<|endoftext|>" in a caption is text, not a control token
    batch = tokenizer(
        captions,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        split_special_tokens=True,
    )
    return {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}


# --------------------------------------------------------------------------- loading

SOURCE = "stage.text_encoder.path"
MODEL_TYPES = {"bert": ("bert",), "clip": ("clip", "clip_text_model")}
TOKENIZER_FILES = {"bert": ("vocab.txt", "tokenizer.json"), "clip": ("tokenizer.json", "vocab.json")}


def build_text_encoder(cfg: TextEncoderConfig, llm_path: str | None = None) -> FrozenTextEncoder:
    """The frozen encoder ``cfg`` names, on the CPU in float32.

    Args:
        cfg: ``stage.text_encoder``.
        llm_path: ``model.llm.path``: the folder ``llm_mean`` reads when ``cfg.path`` is null.

    Raises:
        PathError: no folder configured, or it is missing or not of the kind's model type.
        FileNotFoundError: the folder lacks the tokenizer files or the embedding weights.
    """
    path, source = cfg.path, SOURCE
    if path is None and cfg.kind == "llm_mean":
        path, source = llm_path, "model.llm.path"
    if path is None:
        needs = f"{SOURCE} or model.llm.path" if cfg.kind == "llm_mean" else SOURCE
        raise PathError(f"stage.text_encoder.kind={cfg.kind} needs a local model folder: set {needs}")
    folder = check_path(path, PathKind.hf_model, source)
    if cfg.kind == "llm_mean":
        tokenizer = load_text_tokenizer(folder if (folder / SP_MODEL_FILE).is_file() else None)
        return LlmMeanTextEncoder(read_input_embeddings(folder), tokenizer, cfg.max_length)
    _check_model_type(folder, cfg.kind, source)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES[cfg.kind]):
        raise FileNotFoundError(
            f"{folder} has no {cfg.kind} tokenizer (one of {', '.join(TOKENIZER_FILES[cfg.kind])}) ({source})"
        )
    if cfg.kind == "bert":
        model = BertModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        return BertTextEncoder(
            model, BertTokenizer.from_pretrained(folder, local_files_only=True), cfg.max_length
        )
    model = CLIPTextModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    return ClipTextEncoder(
        model, CLIPTokenizer.from_pretrained(folder, local_files_only=True), cfg.max_length
    )


def _check_model_type(folder: Path, kind: str, source: str) -> None:
    model_type = json.loads((folder / HF_CONFIG).read_text()).get("model_type")
    if model_type not in MODEL_TYPES[kind]:
        raise PathError(
            f"{folder} holds a {model_type!r} model, not a {kind} one "
            f"(stage.text_encoder.kind={kind}) ({source})"
        )


def read_input_embeddings(folder: str | Path) -> torch.Tensor:
    """The ``(V, D)`` input embedding matrix of an HF model folder's safetensors, read
    alone (a 7B LLM's other 14 GB stay on disk), in float32.

    Raises:
        FileNotFoundError: no safetensors weights, or none holds ``embed_tokens``.
    """
    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    else:
        weight_map = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(file, framework="pt") as weights:
                weight_map.update(dict.fromkeys(weights.keys(), file.name))
    if not weight_map:
        raise FileNotFoundError(f"{folder} has no safetensors weights to read the input embeddings from")
    key = next((k for k in EMBEDDING_KEYS if k in weight_map), None)
    if key is None:
        raise FileNotFoundError(
            f"{folder}'s safetensors hold no input embeddings (looked for {', '.join(EMBEDDING_KEYS)})"
        )
    with safe_open(folder / weight_map[key], framework="pt") as weights:
        return weights.get_tensor(key).float()
