"""Writing model outputs (mp4, gif, PNG strips): ``divot_llm.data.media_out``, where the
training run's samples use them too; named here for inference callers."""

from divot_llm.data.media_out import frame_strip, slug, write_gif, write_mp4

__all__ = ["frame_strip", "slug", "write_gif", "write_mp4"]
