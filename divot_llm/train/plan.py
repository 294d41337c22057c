"""``divot-train ... plan=true``: parameter counts and a per-GPU memory estimate, from the
model built on the meta device (shapes only: no weights are read, no memory is used).

Model states come from DeepSpeed's own estimators (``estimate_zero2/3_model_states_mem_needs``)
applied to the *trainable* parameters; they assume full fine-tuning, so the frozen base
is added separately (16-bit weights: replicated up to ZeRO-2, sharded by ZeRO-3). The
frozen video tokenizer is replicated on every GPU. Activations are estimated per token
and layer from the Mistral shapes (what autograd keeps for backward, in the training
dtype; the attention scores are not stored by SDPA/flash/flex kernels), for the largest
micro-batch the data config can produce, for the configured recompute choice and for the
usual alternatives (none, every 2nd layer, every layer) so the user can choose. Temporary buffers, the tokenizer's transient
activations (under no_grad, freed before the LLM runs) and fragmentation come on top.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import MistralConfig

from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import DataConfig, DeepSpeedConfig, DivotConfig, LoraConfig, MixMode, Precision
from divot_llm.model import build_stage_model, checkpointed_layers
from divot_llm.model.resampler import QUERIES
from divot_llm.tokenizers import VideoTokenizer, build_video_tokenizer
from divot_llm.train.stages import stage_class

GiB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    total_params: int
    trainable_params: int
    frozen_params: int
    tokenizer_params: int
    head_input_params: int  # the video head's input module (model.head, model.resampler), inside total_params
    head_output_params: int  # its output module
    tokens_per_clip: int  # M: the LLM's tokens per clip
    feature_tokens: int  # N: the video tokenizer's feature tokens per clip
    gpus: int
    frozen_bytes: float
    model_states_bytes: float  # trainable weights + grads + fp32 master + Adam, per GPU
    tokenizer_bytes: float
    activation_bytes: float  # with model.llm.checkpoint_every as configured
    micro_batch_tokens: int
    # activations for each checkpoint_every choice shown (0 none, 2 every second layer, 1 all)
    activation_bytes_by_recompute: dict[int, float]
    cpu_bytes: float  # host memory per node for offloaded states (0 without offload)

    @property
    def gpu_total_bytes(self) -> float:
        return self.frozen_bytes + self.model_states_bytes + self.tokenizer_bytes + self.activation_bytes


def micro_batch_shape(data_cfg: DataConfig) -> tuple[int, int]:
    """(rows, tokens per row) of the largest micro-batch the data config allows."""
    sources = list(data_cfg.sources.values())
    if data_cfg.mixing == MixMode.batch:  # one source per batch, with that source's batch size
        biggest = max(sources, key=lambda s: s.batch_size * s.max_length)
        samples, length = biggest.batch_size, biggest.max_length
    else:
        length = max(s.max_length for s in sources)
        samples = data_cfg.batch_size
        if data_cfg.tokens_per_batch:  # a batch closes once samples x longest reaches the budget
            samples = min(samples, data_cfg.tokens_per_batch // length + 1)
    if data_cfg.packing:  # rows of pack_length, each holding whole samples (at their longest)
        pack_length = data_cfg.pack_length or length
        per_row = pack_length // length
        return -(-samples // per_row), pack_length
    return samples, length


def activation_bytes_per_token(
    llm_config: MistralConfig, lora_cfg: LoraConfig, dtype_bytes: int, checkpoint_every: int
) -> float:
    """Bytes autograd keeps per token for the decoder (Mistral: GQA attention, SwiGLU MLP).

    Per layer (elements): attention 4d + 2d_kv (input, norm, q, attention output; k, v),
    MLP 2d + 4f (input, norm; gate, up, act(gate), product), LoRA 6d + f (the dropped-out
    inputs of its 7 adapters) when its dropout is on. A checkpointed layer keeps only its
    input (d); while backward recomputes one, its full set is alive once more.
    """
    d, f, layers = llm_config.hidden_size, llm_config.intermediate_size, llm_config.num_hidden_layers
    d_kv = d * llm_config.num_key_value_heads // llm_config.num_attention_heads
    per_layer = 4 * d + 2 * d_kv + 2 * d + 4 * f
    if lora_cfg.enabled and lora_cfg.dropout > 0:
        per_layer += 6 * d + f
    checkpointed = checkpointed_layers(checkpoint_every, layers)
    kept = (layers - checkpointed) * per_layer + checkpointed * d + (per_layer if checkpointed else 0)
    return dtype_bytes * kept


def _model_states(
    stage: int, trainable: int, largest: int, gpus_per_node: int, nodes: int, ds_cfg: DeepSpeedConfig
) -> tuple[float, float]:
    """(GPU bytes, CPU bytes per node) of the trainable states, from DeepSpeed's estimators."""
    gpus = gpus_per_node * nodes
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            trainable,
            largest,
            gpus_per_node,
            nodes,
            ds_cfg.offload_optimizer,
            ds_cfg.offload_param,
            zero_init=False,
        )
        return gpu, cpu if ds_cfg.offload_optimizer else 0.0
    if stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(
            trainable, gpus_per_node, nodes, ds_cfg.offload_optimizer
        )
        return gpu, cpu if ds_cfg.offload_optimizer else 0.0
    # ZeRO-1 shards only the 16 bytes of fp32 master + Adam moments; ZeRO-0 shards nothing.
    return 4 * trainable + 16 * trainable / (gpus if stage == 1 else 1), 0.0


def _largest_module_params(model: nn.Module) -> int:
    """Parameters of the biggest leaf module: what ZeRO-3 gathers at once."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def _meta_tokenizer(cfg: DivotConfig) -> VideoTokenizer:
    """The video tokenizer's architecture on the meta device (its weight paths dropped)."""
    tok_cfg = asdict(cfg.video_tokenizer)
    for key in ("pretrained_path", "vit_path"):
        if key in tok_cfg:
            tok_cfg[key] = None
    with torch.device("meta"):
        return build_video_tokenizer(tok_cfg)


def make_plan(cfg: DivotConfig) -> tuple[MemoryPlan, nn.Module, VideoTokenizer]:
    """The memory plan of ``cfg`` (plus the meta model and tokenizer, for counting).

    Raises:
        ConfigError: a de-tokenizer stage (the estimate models the LLM only), or no stage.
    """
    if stage_class(cfg.stage.name).trains_detokenizer:
        raise ConfigError(f"plan=true estimates the LLM stages only, not stage={cfg.stage.name}")

    tokenizer = _meta_tokenizer(cfg)
    # init_from=None: the release's architecture is model.llm.path; its weights are not read
    model = build_stage_model(cfg, tokenizer, init_from=None, device="meta")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokenizer_params = sum(p.numel() for p in tokenizer.parameters())
    gpus_per_node, nodes = cfg.train.plan_gpus_per_node, cfg.train.plan_nodes
    gpus = gpus_per_node * nodes
    stage = cfg.deepspeed.zero_stage
    width = 4 if cfg.deepspeed.precision == Precision.fp32 else 2  # plans are for GPUs: auto means bf16
    states_gpu, states_cpu = _model_states(
        stage, trainable, _largest_module_params(model), gpus_per_node, nodes, cfg.deepspeed
    )
    samples, length = micro_batch_shape(cfg.data)
    vocab = model.causal_lm.get_output_embeddings().weight.shape[0]
    logits = samples * length * vocab * 4 * 2  # fp32 logits + their gradient, every token supervised (bound)
    configured = cfg.model.llm.checkpoint_every
    by_recompute = {
        every: samples
        * length
        * activation_bytes_per_token(model.causal_lm.config, cfg.model.lora, width, every)
        + logits
        for every in dict.fromkeys((0, 2, 1, configured))
    }
    plan = MemoryPlan(
        total_params=total,
        trainable_params=trainable,
        frozen_params=total - trainable,
        tokenizer_params=tokenizer_params,
        head_input_params=sum(p.numel() for p in model.input_resampler.parameters()),
        head_output_params=sum(p.numel() for p in model.output_resampler.parameters()),
        tokens_per_clip=model.tokens_per_clip,
        feature_tokens=model.feature_tokens,
        gpus=gpus,
        frozen_bytes=width * (total - trainable) / (gpus if stage == 3 else 1),
        model_states_bytes=states_gpu,
        tokenizer_bytes=width * tokenizer_params,
        activation_bytes=by_recompute[configured],
        micro_batch_tokens=samples * length,
        activation_bytes_by_recompute=by_recompute,
        cpu_bytes=states_cpu,
    )
    return plan, model, tokenizer


def format_plan(plan: MemoryPlan, cfg: DivotConfig) -> str:
    """A human-readable report of ``plan``."""
    stage = cfg.deepspeed.zero_stage
    offload = " + optimizer offload" if cfg.deepspeed.offload_optimizer else ""
    resampled = (
        f"; model.resampler.kind=queries: {plan.tokens_per_clip} LLM tokens per clip for "
        f"{plan.feature_tokens} feature tokens"
        if cfg.model.resampler.kind == QUERIES
        else ""
    )
    rows = [
        f"parameters: {plan.total_params / 1e6:,.1f} M in the LLM + heads "
        f"({plan.trainable_params / 1e6:,.2f} M trainable, {plan.frozen_params / 1e6:,.1f} M frozen); "
        f"video tokenizer {plan.tokenizer_params / 1e6:,.1f} M (frozen)",
        f"video head model.head={cfg.model.head}: input module {plan.head_input_params / 1e6:,.2f} M, "
        f"output module {plan.head_output_params / 1e6:,.2f} M{resampled}",
        f"memory per GPU, ZeRO-{stage}{offload}, {plan.gpus} GPUs "
        f"({cfg.train.plan_nodes} node(s) x {cfg.train.plan_gpus_per_node}):",
        f"  frozen LLM weights        {plan.frozen_bytes / GiB:8.2f} GiB",
        f"  trainable states          {plan.model_states_bytes / GiB:8.2f} GiB  (DeepSpeed estimator)",
        f"  video tokenizer weights   {plan.tokenizer_bytes / GiB:8.2f} GiB",
        f"  activations               {plan.activation_bytes / GiB:8.2f} GiB  "
        f"(micro-batch of {plan.micro_batch_tokens:,} tokens, "
        f"{recompute_name(cfg.model.llm.checkpoint_every)})",
        f"  total                     {plan.gpu_total_bytes / GiB:8.2f} GiB  (+ buffers and fragmentation)",
        "total by model.llm.checkpoint_every (activation recompute; more recompute, less memory, slower):",
    ]
    others = plan.gpu_total_bytes - plan.activation_bytes
    for every, activations in plan.activation_bytes_by_recompute.items():
        rows.append(
            f"  {every:<3d} {recompute_name(every):<26} {(others + activations) / GiB:8.2f} GiB  "
            f"(activations {activations / GiB:.2f} GiB)"
        )
    if plan.cpu_bytes:
        rows.append(f"host memory per node for offloaded states: {plan.cpu_bytes / GiB:.1f} GiB")
    return "\n".join(rows)


def recompute_name(checkpoint_every: int) -> str:
    """``model.llm.checkpoint_every`` in words."""
    if checkpoint_every == 0:
        return "no recompute"
    if checkpoint_every == 1:
        return "every layer recomputed"
    return f"1 layer in {checkpoint_every} recomputed"
