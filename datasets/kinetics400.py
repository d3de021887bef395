"""Convert Kinetics-400 (csv annotations + downloaded clips) into WebDataset shards.

    python datasets/kinetics400.py --root KINETICS --out SHARDS [--frames 5 --size 224
        [--vq CODES.pkl]] [--skip-missing] [--samples-per-shard N] [--workers N]

The layout expected under --root and how its splits map onto train / val / test are described in
meltr/data/converters/kinetics.py. Rerunning keeps complete shards; an --out holding another
conversion is refused. Exit code 2 when listed clips have no file (they are named) and
--skip-missing is not given, or when a file is missing or malformed.
"""

import argparse
import sys

from meltr.data.converters.kinetics import convert_kinetics
from meltr.data.converters.release_files import MissingItemsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the Kinetics-400 directory")
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument(
        "--frames", type=int, default=None, help="store these many fixed frames instead of the clip"
    )
    parser.add_argument("--size", type=int, default=224, help="frame side with --frames (even)")
    parser.add_argument("--vq", default=None, help="dVAE codes {clip: [frames, g, g]} (pickle)")
    parser.add_argument("--skip-missing", action="store_true", help="leave out absent clips")
    parser.add_argument("--samples-per-shard", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards")
    args = parser.parse_args(argv)

    try:
        result = convert_kinetics(
            args.root,
            args.out,
            frames=args.frames,
            size=args.size,
            vq=args.vq,
            skip_missing=args.skip_missing,
            samples_per_shard=args.samples_per_shard,
            workers=args.workers,
        )
    except (MissingItemsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for missing in result["skipped"]:
        print(f"skipped {missing}")
    for split in ("train", "val", "test"):
        if split in result:
            shards = result[split]
            where = f"{shards[0]} ... {shards[-1].name}" if shards else "(no clips)"
            print(f"{split}: {len(shards)} shards: {where}")
    print(f"labels: {result['labels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
