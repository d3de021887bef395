"""Convert CMU-MOSI (MMSA's processed pickles, or the CMU-MultimodalSDK's .csd files) into
WebDataset shards (feature + text kind).

    python datasets/mosi.py --root MOSI_DIR --out SHARD_DIR [--layout aligned_50|unaligned_50]
        [--features vision|vision+audio] [--skip-missing] [--samples-per-shard N]
    python datasets/mosi.py --sdk CSD_DIR --folds FOLDS.json --out SHARD_DIR [--vision-file NAME]
        [--layout ...] [--features ...] [--skip-missing] [--samples-per-shard N]

--root holds Processed/<layout>.pkl (or <layout>.pkl). --sdk holds the SDK's CMU-MOSI .csd files
(labels, timestamped words, Facet, COVAREP; read with h5py: pip install meltr[mosi]) and --folds the
SDK's standard folds as JSON {"train": [video ids], "valid": [...], "test": [...]}; see
meltr/data/converters/mosi_sdk.py for the alignment. One sample per utterance: the utterance text as
its caption, the Facet (and COVAREP) rows as its features, the sentiment score as its label; train /
val (valid) / test. Rerunning keeps complete shards; an --out holding another conversion is refused.
Exit code 2 when utterances lack text or a finite label (they are named) and --skip-missing is not
given, or when an input file is absent or malformed.
"""

import argparse
import sys

from meltr.data.converters.mosi import FEATURES, LAYOUTS, plan_mosi, write_plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", help="the folder of MMSA's MOSI files")
    source.add_argument("--sdk", help="the folder of the CMU-MultimodalSDK's CMU-MOSI .csd files")
    parser.add_argument("--folds", help="with --sdk: the standard folds as JSON")
    parser.add_argument(
        "--vision-file",
        help="with --sdk: the visual sequence (default CMU_MOSI_Visual_Facet_41.csd)",
    )
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument("--layout", choices=LAYOUTS, default="aligned_50")
    parser.add_argument("--features", choices=FEATURES, default="vision")
    parser.add_argument(
        "--skip-missing", action="store_true", help="leave out utterances that cannot be written"
    )
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    args = parser.parse_args()
    if args.sdk and not args.folds:
        parser.error("--sdk needs --folds (the SDK's standard folds as JSON)")
    if args.root and (args.folds or args.vision_file):
        parser.error("--folds and --vision-file go with --sdk")

    try:
        if args.sdk:
            try:
                from meltr.data.converters.mosi_sdk import plan_mosi_sdk
            except ModuleNotFoundError as error:
                print(
                    f"error: --sdk reads HDF5 with h5py ({error}): pip install meltr[mosi]",
                    file=sys.stderr,
                )
                return 2
            plan = plan_mosi_sdk(args.sdk, args.folds, args.layout, args.features, args.vision_file)
        else:
            plan = plan_mosi(args.root, args.layout, args.features)
        result = write_plan(plan, args.out, args.skip_missing, args.samples_per_shard)
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
