"""Convert the official CIFAR-100 (or CIFAR-10) python release into WebDataset shards.

    python datasets/cifar.py --root cifar-100-python --out SHARD_DIR [--labels fine|coarse]
        [--val-size 5000] [--seed 0] [--samples-per-shard 5000]

--root is the release folder (``cifar-100-python/`` or ``cifar-10-batches-py/``) or its parent; the
layout is described in meltr/data/converters/cifar.py. Writes train-, val- and test-*.tar and
classes.json; rerunning keeps complete shards; an --out holding another conversion is refused. Exit
code 2 when a release file is missing or malformed (it is named).
"""

import argparse
import sys

from meltr.data.converters.cifar import CifarFormatError, convert_cifar


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the CIFAR python release folder")
    parser.add_argument("--out", required=True, help="directory for the shards")
    parser.add_argument("--labels", choices=("fine", "coarse"), default="fine", help="CIFAR-100")
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation choice")
    parser.add_argument("--samples-per-shard", type=int, default=5000)
    args = parser.parse_args()
    try:
        result = convert_cifar(
            args.root, args.out, args.labels, args.val_size, args.seed, args.samples_per_shard
        )
    except (CifarFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result['release']}: {len(result['classes'])} classes (classes.json)")
    for split in ("train", "val", "test"):
        print(f"{split}: {len(result[split])} shards in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
