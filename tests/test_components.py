"""A component is one module plus one yaml: a video tokenizer defined in this test module
(its class, its config dataclass, one registration) and selected by a yaml in a copy of
``conf/`` composes, validates its keys, reads back from a saved config and trains a step,
with no line about it in ``config/schema.py``, ``config/loading.py`` or the trainer."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from hydra.errors import HydraException
from torch import nn

from divot_llm.config import CONF_DIR, ConfigError, compose_config, load_saved_config, save_resolved_config
from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset
from divot_llm.tokenizers import VideoTokenizer, register_video_tokenizer
from divot_llm.train.trainer import Trainer
from tests.train.conftest import RUN_OVERRIDES


@dataclasses.dataclass
class ToyTokenizerConfig:
    """The toy's schema: what ``conf/video_tokenizer/toy.yaml`` may set."""

    name: str = "toy"
    arch: str = "toy"
    frames_per_clip: int = 5  # what the data pipeline's default sampling gives
    input_size: int = 32
    num_tokens: int = 4  # a 2 x 2 grid of patch means
    feature_dim: int = 12


@register_video_tokenizer("toy")
class ToyTokenizer(VideoTokenizer):
    """Mean colour of each quarter of the clip, projected to ``feature_dim``."""

    config_class = ToyTokenizerConfig

    def __init__(self, config: ToyTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(3, config.feature_dim)
        self.encoded_shapes: list[tuple[int, ...]] = []  # every batch of clips it encoded
        self.freeze()

    @classmethod
    def from_config(cls, config: ToyTokenizerConfig) -> ToyTokenizer:
        return cls(config)

    @classmethod
    def from_pretrained(cls, path):
        raise NotImplementedError

    def save_pretrained(self, path):
        raise NotImplementedError

    frames_per_clip = property(lambda self: self.config.frames_per_clip)
    num_tokens = property(lambda self: self.config.num_tokens)
    feature_dim = property(lambda self: self.config.feature_dim)
    input_size = property(lambda self: self.config.input_size)

    def _encode(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        self.encoded_shapes.append(tuple(frames_bfchw.shape))
        quarters = nn.functional.adaptive_avg_pool2d(frames_bfchw.mean(1), 2)  # (B, 3, 2, 2)
        return self.proj(quarters.flatten(2).transpose(1, 2))  # (B, 4, feature_dim)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """Just enough synthetic data for one batch of every source."""
    root = tmp_path_factory.mktemp("toy_data") / "synthetic"
    write_synthetic_dataset(root, seed=3, counts=SyntheticCounts(train_videos=2, val_videos=1, images=2))
    return root


def toy_conf(tmp_path, **fields) -> str:
    """A copy of ``conf/`` with ``video_tokenizer/toy.yaml`` selecting the toy."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    lines = ["defaults:", "  - schema_toy", "  - _self_", *(f"{k}: {v}" for k, v in fields.items())]
    (conf / "video_tokenizer" / "toy.yaml").write_text("\n".join(lines) + "\n")
    return str(conf)


def test_a_toy_tokenizer_from_this_module_trains_a_step(ds_process_group, toy_data, tmp_path):
    cfg = compose_config(
        [*RUN_OVERRIDES, "video_tokenizer=toy", f"data.root={toy_data}", "data.num_workers=0",
         "train.max_steps=1", "train.eval_every=0", f"train.output_dir={tmp_path / 'run'}"],
        conf_dir=toy_conf(tmp_path, feature_dim=6),
    )  # fmt: skip
    assert cfg.video_tokenizer == ToyTokenizerConfig(feature_dim=6)  # the yaml merged onto the schema
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        toy = trainer.video_tokenizer
        assert isinstance(toy, ToyTokenizer)
        batch = next(iter(trainer.loader))
        assert batch["frames"].shape[-4:] == (5, 3, 32, 32)  # clips sampled for the toy
        feats = trainer.prepare(batch)["video_feats"]
        assert feats.shape[-2:] == (4, 6) and feats.abs().sum() > 0  # the toy's features
        toy.encoded_shapes.clear()
        assert trainer.train() == "finished" and trainer.step == 1
        assert toy.encoded_shapes, "the step did not encode its clips with the toy"
    finally:
        trainer.cleanup()


def test_a_typo_in_the_toy_yaml_fails_at_composition_naming_the_key(tmp_path):
    with pytest.raises(HydraException) as err:
        compose_config(["video_tokenizer=toy"], conf_dir=toy_conf(tmp_path, feature_dimm=6))
    chain = [str(err.value), str(err.value.__cause__)]
    assert any("Key 'feature_dimm' not in 'ToyTokenizerConfig'" in message for message in chain), chain


def test_a_typo_in_a_toy_override_fails_naming_the_key(tmp_path):
    conf = toy_conf(tmp_path)
    with pytest.raises(ConfigError, match="unknown key video_tokenizer.num_tokenz.*did you mean"):
        compose_config(["video_tokenizer=toy", "+video_tokenizer.num_tokenz=3"], conf_dir=conf)


def test_a_saved_toy_config_reads_back_onto_the_toy_schema(tmp_path):
    cfg = compose_config(["video_tokenizer=toy", "video_tokenizer.num_tokens=9"], conf_dir=toy_conf(tmp_path))
    saved = save_resolved_config(cfg, tmp_path / "run")
    assert load_saved_config(saved).video_tokenizer == ToyTokenizerConfig(num_tokens=9)
    with pytest.raises(ConfigError, match="Key 'num_tokenz' not in 'ToyTokenizerConfig'"):
        load_saved_config(saved, ["video_tokenizer.num_tokenz=3"])
