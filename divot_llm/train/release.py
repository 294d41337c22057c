"""Turn a training checkpoint into a merged release (``llm/`` + ``agent/``), the form an
SFT stage starts from (``stage.init_from``) and inference loads.

This is ``divot_llm.export.merge_release`` with its defaults (fp32, no verification,
replacing ``out_dir``); ``divot-merge`` is the command-line form with every option.
"""

from __future__ import annotations

import os
from pathlib import Path


def checkpoint_to_release(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the merged release of a training checkpoint.

    Args:
        checkpoint: A ``checkpoints/step_*`` folder, or a run's output folder (its latest
            complete checkpoint is used).
        out_dir: Release folder to create (replaced if it exists).

    Returns:
        ``out_dir``.

    Raises:
        divot_llm.export.CheckpointError: no complete checkpoint at ``checkpoint``.
    """
    from divot_llm.export import merge_release

    return merge_release(checkpoint, out_dir, overwrite=True, log=lambda _: None).out_dir
