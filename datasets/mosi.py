"""Convert CMU-MOSI (MMSA's processed pickles) into WebDataset shards (feature + text kind).

    python datasets/mosi.py --root MOSI_DIR --out SHARD_DIR [--layout aligned_50|unaligned_50]
        [--features vision|vision+audio] [--skip-missing] [--samples-per-shard N]

--root holds Processed/<layout>.pkl (or <layout>.pkl). One sample per utterance: the utterance text
as its caption, the Facet (and COVAREP) rows as its features, the sentiment score as its label;
train / val (MMSA's valid) / test. The CMU-MultimodalSDK .csd files need h5py and are not read; see
meltr/data/mosi.py. Rerunning keeps complete shards; an --out holding another conversion is
refused. Exit code 2 when utterances lack text or a finite label (they are named) and --skip-
missing is not given, or when the pickle is absent or malformed.
"""

import argparse
import sys

from meltr.data.mosi import FEATURES, LAYOUTS, convert_mosi


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the folder of MMSA's MOSI files")
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument("--layout", choices=LAYOUTS, default="aligned_50")
    parser.add_argument("--features", choices=FEATURES, default="vision")
    parser.add_argument(
        "--skip-missing", action="store_true", help="leave out utterances that cannot be written"
    )
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    args = parser.parse_args()

    try:
        result = convert_mosi(
            args.root,
            args.out,
            args.layout,
            args.features,
            args.skip_missing,
            args.samples_per_shard,
        )
    except (ValueError, FileNotFoundError) as error:  # MissingItemsError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    for missing in result["skipped"]:
        print(f"skipped {missing}")
    print(
        f"features: {args.features}, {result['feature_dim']}-d (set UniVL.feature_dim to it); "
        f"{result['non_finite']} non-finite entries set to 0"
    )
    for split in ("train", "val", "test"):
        shards = result[split]
        where = f"{shards[0]} ... {shards[-1].name}" if shards else "(no utterances)"
        print(f"{split}: {len(shards)} shards: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
