"""Generate the synthetic moving-shapes video-text dataset as WebDataset shards.

    python datasets/synthetic.py --out data/synthetic [--num-train 2048 --num-test 256 --frames 8
        --size 64 --seed 0 --workers 2]

Reuses the output directory when it already holds a complete dataset made with the same arguments.
"""

import argparse
import os
import time

from meltr.data.synthetic.video_captions import ensure_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-train", type=int, default=2048, help="train clips")
    parser.add_argument("--num-test", type=int, default=256, help="test clips")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--fps", type=int, default=8, help="frames per second of the mp4s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--captions", type=int, default=5, help="captions per train clip")
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--codec", default="mpeg4", choices=("mpeg4", "libx264"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    args = parser.parse_args()

    started = time.perf_counter()
    paths = ensure_synthetic_dataset(
        args.out,
        num_train=args.num_train,
        num_test=args.num_test,
        num_frames=args.frames,
        size=args.size,
        fps=args.fps,
        seed=args.seed,
        captions_per_train_video=args.captions,
        samples_per_shard=args.samples_per_shard,
        codec=args.codec,
        workers=args.workers,
    )
    seconds = time.perf_counter() - started
    clips = args.num_train + args.num_test
    print(f"{clips} clips in {seconds:.1f} s ({clips / seconds:.0f} clips/s) in {paths['root']}")
    print(
        f"train: {len(paths['train'])} shards, {paths['train'][0] if paths['train'] else '-'} ..."
    )
    print(f"test: {len(paths['test'])} shards, {paths['test'][0] if paths['test'] else '-'} ...")
    print(f"vocab: {paths['vocab']}")


if __name__ == "__main__":
    main()
