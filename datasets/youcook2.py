"""Convert UniVL's YouCook2 feature release into WebDataset shards (feature + text kind).

    python datasets/youcook2.py --root YOUCOOKII_DIR --out SHARD_DIR
        [--data-pickle youcookii_data.no_transcript.pickle] [--skip-missing]
        [--samples-per-shard N]

The layout expected under --root and what is written are described in
meltr/data/converters/youcook2.py: one sample per clip (caption), train from youcookii_train.csv,
test from youcookii_val.csv. Rerunning keeps complete shards; an --out holding another conversion is
refused. Exit code 2 when listed clips lack features, an entry or a caption (they are named) and
--skip-missing is not given, or when a release file is absent or malformed.
"""

import argparse
import sys

from meltr.data.converters.youcook2 import DATA_PICKLES, convert_youcook2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the folder of UniVL's youcookii files")
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument(
        "--data-pickle",
        default=None,
        help=f"the captions file (default: {DATA_PICKLES[0]} if present, else {DATA_PICKLES[1]})",
    )
    parser.add_argument(
        "--skip-missing", action="store_true", help="leave out clips that cannot be written"
    )
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    args = parser.parse_args()

    try:
        result = convert_youcook2(
            args.root, args.out, args.data_pickle, args.skip_missing, args.samples_per_shard
        )
    except (ValueError, FileNotFoundError) as error:  # MissingItemsError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    for missing in result["skipped"]:
        print(f"skipped {missing}")
    with_transcript = result["with_transcript"]
    print(f"captions from {result['data_pickle']}; {with_transcript} clips have a transcript")
    for split in ("train", "test"):
        shards = result[split]
        where = f"{shards[0]} ... {shards[-1].name}" if shards else "(no clips)"
        print(f"{split}: {len(shards)} shards: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
