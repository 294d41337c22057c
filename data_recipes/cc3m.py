"""Pack image-text pairs (CC3M style) into webdataset image shards.

Two input layouts:

    --images DIR --pairs FILE   a CSV (or tab-separated .tsv) with a header holding
                                ``caption`` and ``path`` columns; ``path`` is under DIR
    --images DIR                img2dataset-style pairs found recursively under DIR:
                                <name>.jpg|jpeg|png|webp with its caption in <name>.txt

Every image is decoded with PIL; missing or corrupt images, missing or empty captions,
unsafe paths (``..``, absolute, or images and captions that are links leading outside
DIR), unsupported formats and bad table lines (a quoted field must end on its own line)
are skipped and counted, each with its ``file:line`` (or file, for folder pairs). The
key is the image's path under DIR without its extension, ``/`` and dots turned into
``_``; a path that maps to a key already taken is skipped.

Writes <out>/shard-NNNNN.tar (<key>.jpg|png|webp + <key>.txt caption + <key>.json
{"width", "height", "path"}), <out>/manifest.json and <out>/skipped.txt.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from data_recipes.inputs import (
    SkipLog,
    check_all,
    check_image,
    input_error,
    is_file,
    is_text,
    media_extension,
    read_table,
    resolve_inside,
    safe_relative_path,
    table_columns,
    webdataset_key,
)
from data_recipes.shards import (
    Sample,
    add_shard_arguments,
    plan_and_write,
    prepare_out,
    write_manifest,
)
from divot_llm.data.sources import IMAGE_EXTS

REQUIRED_COLUMNS = ("caption", "path")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="folder holding the images")
    parser.add_argument(
        "--pairs", type=Path, help="CSV/TSV with caption and path columns (else <name>.txt files)"
    )
    add_shard_arguments(parser)


@dataclass(frozen=True)
class Pair:
    where: str
    image: PurePosixPath  # relative to --images
    caption: str


def pairs_from_table(path: Path, skips: SkipLog) -> list[Pair]:
    pairs = []
    for where, row in tqdm(read_table(path, skips), desc=f"read {path.name}", unit="row"):
        image = safe_relative_path(row["path"])
        if image is None:
            skips.skip("unsafe_path", where, repr(row["path"]))
        else:
            pairs.append(Pair(where, image, row["caption"].strip()))
    return pairs


def pairs_inside(pairs: list[Pair], images: Path, skips: SkipLog) -> list[Pair]:
    """The pairs whose image stays under ``images`` once links are followed."""
    inside = []
    for pair in pairs:
        if resolve_inside(images, pair.image) is None:
            skips.skip("unsafe_path", pair.where, f"{pair.image} leads outside {images} through a link")
        else:
            inside.append(pair)
    return inside


def pairs_from_folder(images: Path, skips: SkipLog) -> list[Pair]:
    """Each image file under ``images`` with the caption in its sibling ``.txt``."""
    pairs = []
    for path in tqdm(sorted(images.rglob("*")), desc="list", unit="file"):
        if media_extension(path) not in IMAGE_EXTS or not is_file(path):
            continue
        if not is_text(str(path.relative_to(images))):
            skips.skip("bad_encoding", str(path), "the file name is not valid UTF-8")
            continue
        caption_file = path.with_suffix(".txt")
        if not is_file(caption_file):
            skips.skip("missing_caption", str(path), f"no {caption_file.name}")
            continue
        if resolve_inside(images, PurePosixPath(caption_file.relative_to(images).as_posix())) is None:
            skips.skip("unsafe_path", str(caption_file), f"leads outside {images} through a link")
            continue
        try:
            caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as exc:
            skips.skip("unreadable_caption", str(caption_file), exc.strerror or str(exc))
            continue
        if not is_text(caption):
            skips.skip("bad_encoding", str(caption_file), "not valid UTF-8")
            continue
        pairs.append(Pair(str(path), PurePosixPath(path.relative_to(images).as_posix()), caption))
    return pairs


def valid_pairs(pairs: list[Pair], skips: SkipLog) -> list[tuple[Pair, str]]:
    """Pairs with a caption, a supported format and a key of their own, keyed."""
    keyed, used = [], set()
    for pair in pairs:
        key = webdataset_key(str(pair.image.with_suffix("")))
        if not pair.caption:
            skips.skip("empty_caption", pair.where, str(pair.image))
        elif media_extension(pair.image) not in IMAGE_EXTS:
            skips.skip("unsupported_format", pair.where, str(pair.image))
        elif key is None:
            skips.skip("unsafe_path", pair.where, str(pair.image))
        elif key in used:
            skips.skip("duplicate_key", pair.where, f"{pair.image} maps to key {key}, already taken")
        else:
            used.add(key)
            keyed.append((pair, key))
    return keyed


def to_sample(pair: Pair, key: str, size: tuple[int, int], images: Path) -> Sample:
    metadata = {"width": size[0], "height": size[1], "path": str(pair.image)}
    return Sample(
        key,
        {
            media_extension(pair.image): images / pair.image,
            "txt": pair.caption.encode("utf-8"),
            "json": json.dumps(metadata, ensure_ascii=False, sort_keys=True).encode("utf-8"),
        },
    )


def run(args: argparse.Namespace) -> int:
    error = input_error([args.pairs] if args.pairs else [], [args.images])
    if error:
        print(error)
        return 2
    if args.pairs is not None:
        missing = [c for c in REQUIRED_COLUMNS if c not in table_columns(args.pairs)]
        if missing:
            print(
                f"error: {args.pairs} needs a header with columns caption and path (missing {', '.join(missing)})"
            )
            return 2
    error = prepare_out(args.out, args.overwrite)
    if error:
        print(error)
        return 2
    skips = SkipLog()
    pairs = pairs_from_table(args.pairs, skips) if args.pairs else pairs_from_folder(args.images, skips)
    keyed = valid_pairs(pairs_inside(pairs, args.images, skips), skips)
    checked = check_all(
        keyed, lambda pair_key: (pair_key[0].where, pair_key[0].image), args.images, check_image,
        args.workers, skips, desc="check", unit="image",
    )  # fmt: skip
    samples = [to_sample(pair, key, size, args.images) for (pair, key), size in checked]
    shards = plan_and_write(args.out, samples, args.max_shard_bytes, args.max_shard_samples, "write")
    manifest = {
        "recipe": "cc3m",
        "inputs": {"images": str(args.images), "pairs": str(args.pairs) if args.pairs else None},
        "samples": len(samples),
        "images": len(samples),
        "shards": shards,
        "skipped": dict(sorted(skips.counts.items())),
        "skipped_total": skips.total,
    }
    write_manifest(args.out, manifest, skips.lines)
    print(f"wrote {len(samples)} images in {len(shards)} shards to {args.out}; {skips.summary()}")
    return 0 if samples else 1
