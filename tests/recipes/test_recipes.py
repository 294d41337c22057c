"""The `divot-data` command: synthetic writing and shard inspection."""

from __future__ import annotations

import io
import tarfile

from data_recipes.__main__ import main
from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset


def _write(tmp_path):
    out = tmp_path / "set"
    write_synthetic_dataset(
        out, seed=5, counts=SyntheticCounts(train_videos=4, val_videos=0, images=2, samples_per_shard=2)
    )
    return out


def test_inspect_passes_a_good_set(tmp_path, capsys):
    out = _write(tmp_path)
    assert main(["inspect", str(out / "train" / "*" / "*.tar"), "--verify-synthetic"]) == 0
    report = capsys.readouterr().out
    assert "6 samples: image 2, video 4" in report and "0 problem samples" in report


def test_inspect_counts_a_corrupt_video_and_keeps_going(tmp_path, capsys):
    out = _write(tmp_path)
    shard = sorted((out / "train" / "videos").glob("*.tar"))[0]
    members = []
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            members.append((info, tar.extractfile(info).read()))
    victim = next(info.name for info, _ in members if info.name.endswith((".mp4", ".webm", ".gif")))
    with tarfile.open(shard, "w") as tar:
        for info, data in members:
            if info.name == victim:
                data = data[: len(data) // 3]  # a truncated upload
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert main(["inspect", str(out / "train" / "videos" / "*.tar")]) == 1
    report = capsys.readouterr().out
    assert "4 samples" in report and "1 problem samples" in report
    assert victim.split(".")[0] in report


def test_synthetic_refuses_to_overwrite_without_flag(tmp_path, capsys):
    out = _write(tmp_path)
    assert (
        main(["synthetic", "--out", str(out), "--train-videos", "1", "--val-videos", "0", "--images", "0"])
        == 2
    )
    assert "--overwrite" in capsys.readouterr().out
