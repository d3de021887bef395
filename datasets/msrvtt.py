"""Convert the official MSRVTT release into WebDataset shards.

    python datasets/msrvtt.py --root MSRVTT_DIR --out SHARD_DIR --split 9k|7k [--val N]
        [--skip-missing] [--samples-per-shard N]

--val N holds the last N videos of the training list out as a val split (one caption each),
for checkpoint selection and sweeps that never look at the test split (tools/sweeps/).

The layout expected under --root, and where the test captions come from, are described in
meltr/data/converters/msrvtt.py. Rerunning keeps complete shards; an --out holding another
conversion is refused. Exit code 2 when listed videos lack an mp4 or captions or their mp4 does not
decode (they are named) and --skip-missing is not given.
"""

import argparse
import sys

from meltr.data.converters.msrvtt import convert_msrvtt
from meltr.data.converters.release_files import MissingItemsError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the MSRVTT release directory")
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument("--split", choices=("9k", "7k"), default="9k", help="training split")
    parser.add_argument(
        "--val", type=int, default=0, help="training videos held out as a val split (default 0)"
    )
    parser.add_argument(
        "--skip-missing", action="store_true", help="leave out videos without mp4 or captions"
    )
    parser.add_argument("--samples-per-shard", type=int, default=200)
    args = parser.parse_args()

    try:
        result = convert_msrvtt(
            args.root, args.out, args.split, args.skip_missing, args.samples_per_shard, args.val
        )
    except (MissingItemsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for missing in result["skipped"]:
        print(f"skipped {missing}")
    print(f"test captions from {result['test_caption_source']}")
    for split in ("train", "val", "test"):
        shards = result[split]
        where = f"{shards[0]} ... {shards[-1].name}" if shards else "(no videos)"
        print(f"{split}: {len(shards)} shards: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
