"""Convert MSVD-QA (or MSRVTT-QA) in ALPRO's layout into WebDataset shards (video + QA kind).

    python datasets/alpro_msvd_qa.py --root data/msvd_qa --out SHARD_DIR [--skip-missing]
        [--samples-per-shard N] [--workers N]

The layout expected under --root (txt/{train,val,test}.jsonl, txt/train_ans2label.json,
videos/<video_id>.avi) and what is written are described in meltr/data/converters/alpro_qa.py.
Rerunning keeps complete shards. Exit code 2 when questions lack their video (they are named) and
--skip-missing is not given, or when an annotation file is absent or malformed.
"""

import argparse
import sys

from meltr.data.converters.alpro_qa import convert_alpro_qa


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the dataset folder of ALPRO's data/")
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument(
        "--skip-missing", action="store_true", help="leave out questions whose video is missing"
    )
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards")
    args = parser.parse_args(argv)

    try:
        result = convert_alpro_qa(
            args.root, args.out, args.skip_missing, args.samples_per_shard, args.workers
        )
    except (ValueError, FileNotFoundError) as error:  # MissingItemsError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    for missing in result["skipped"]:
        print(f"skipped {missing}")
    for split in ("train", "val", "test"):
        if split in result:
            shards = result[split]
            where = f"{shards[0]} ... {shards[-1].name}" if shards else "(no questions)"
            outside = result["out_of_vocabulary"][split]
            print(
                f"{split}: {len(shards)} shards: {where}; {outside} answers outside the vocabulary"
            )
    print(f"answer vocabulary ({result['num_answers']}): {result['answers']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
