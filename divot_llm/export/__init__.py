"""From a training checkpoint to something to share and run: ZeRO -> fp32 safetensors,
LoRA merge into the release layout (verified), and the release's ``release.json``."""

from divot_llm.export.merge import MergeResult, merge_release
from divot_llm.export.verify import VerificationError
from divot_llm.export.zero import (
    CheckpointError,
    ZeroCheckpoint,
    read_fp32_export,
    resolve_checkpoint,
    zero_to_fp32,
)

__all__ = [
    "CheckpointError",
    "MergeResult",
    "VerificationError",
    "ZeroCheckpoint",
    "merge_release",
    "read_fp32_export",
    "resolve_checkpoint",
    "zero_to_fp32",
]
