"""Convert the Violet release's datasets (frame pickles, dVAE codes, annotations) into shards.

    python datasets/violet.py --root RELEASE --out SHARDS --task TASK [--size 224] [--no-vq]
        [--annotation auto|json|tsv] [--skip-missing] [--samples-per-shard N] [--workers N]

TASK is msrvtt-9k, msrvtt-7k, tgif-action, tgif-transition, tgif-frame or msvd-qa; the files
expected under --root are listed in meltr/data/converters/violet_release.py. Rerunning keeps
complete shards; an --out holding another conversion is refused. Exit code 2 when annotated items
lack frames or codes (they are named) and --skip-missing is not given, or when a file is missing or
malformed.
"""

import argparse
import sys

from meltr.data.converters.release_files import MissingItemsError
from meltr.data.converters.violet_release import TASKS, convert_violet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the release's data directory")
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (even)")
    parser.add_argument("--no-vq", action="store_true", help="write no dVAE codes (no MVM)")
    parser.add_argument("--annotation", choices=("auto", "json", "tsv"), default="auto")
    parser.add_argument(
        "--skip-missing", action="store_true", help="leave out items without frames or codes"
    )
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards")
    args = parser.parse_args(argv)

    try:
        result = convert_violet(
            args.root,
            args.out,
            args.task,
            size=args.size,
            vq=not args.no_vq,
            annotation=args.annotation,
            skip_missing=args.skip_missing,
            samples_per_shard=args.samples_per_shard,
            workers=args.workers,
        )
    except (MissingItemsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for missing in result["skipped"]:
        print(f"skipped {missing}")
    print(f"annotations from {result['annotation_source']}")
    for split in ("train", "val", "test"):
        if split in result:
            shards = result[split]
            where = f"{shards[0]} ... {shards[-1].name}" if shards else "(no items)"
            print(f"{split}: {len(shards)} shards: {where}")
    if result["answers"] is not None:
        print(f"answer vocabulary: {result['answers']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
