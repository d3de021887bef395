"""Convert UniVL's MSRVTT feature release into WebDataset shards (feature + text kind).

    python datasets/msrvtt_features.py --root MSRVTT_DIR --out SHARD_DIR
        --layout retrieval-9k|retrieval-7k|caption [--skip-missing] [--samples-per-shard N]
        [--num-train 6513 --num-val 497]

retrieval-9k / retrieval-7k: train from MSRVTT_train.9k.csv / .7k.csv (all captions per video), test
the 1000 JSFusion pairs of MSRVTT_JSFUSION_test.csv. caption: MSRVTT-full, the videos of
MSRVTT_data.json in order, 6513 train / 497 val / 2990 test, all 20 captions each. Details in
meltr/data/converters/msrvtt_features.py. Rerunning keeps complete shards; an --out holding another
conversion is refused. Exit code 2 when listed videos lack features or captions (they are named) and
--skip-missing is not given, or when a release file is absent or malformed.
"""

import argparse
import sys

from meltr.data.converters.msrvtt_features import FULL_SPLIT, LAYOUTS, convert_msrvtt_features


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the folder of UniVL's msrvtt files")
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument("--layout", choices=LAYOUTS, default="retrieval-9k")
    parser.add_argument(
        "--skip-missing", action="store_true", help="leave out videos that cannot be written"
    )
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument(
        "--num-train",
        type=int,
        default=FULL_SPLIT["num_train"],
        help="caption layout: train videos",
    )
    parser.add_argument(
        "--num-val", type=int, default=FULL_SPLIT["num_val"], help="caption layout: val videos"
    )
    args = parser.parse_args()

    try:
        result = convert_msrvtt_features(
            args.root,
            args.out,
            args.layout,
            args.skip_missing,
            args.samples_per_shard,
            args.num_train,
            args.num_val,
        )
    except (ValueError, FileNotFoundError) as error:  # MissingItemsError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    for missing in result["skipped"]:
        print(f"skipped {missing}")
    for split in ("train", "val", "test"):
        if split in result:
            shards = result[split]
            where = f"{shards[0]} ... {shards[-1].name}" if shards else "(no videos)"
            print(f"{split}: {len(shards)} shards: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
