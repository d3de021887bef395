"""Convert a labelled text table (CSV, TSV or JSON lines; plain, .gz or .bz2) into shards.

    python datasets/text_classification.py --input FILE --text-column C --label-column C \
        [--group-column C] [--labels A,B,...] [--val-size 0.1] [--test-size 0.1] \
        [--train-size N] [--seed 0] --out SHARD_DIR

Rows with an empty text or label are skipped and counted; --labels keeps the rows of these labels
(in this order: label 0, 1, ...) and drops and counts the others; without it the classes are the
sorted distinct labels. --group-column keeps every group (e.g. all reviews of one movie) in one
split. A size below 1 is a fraction of the kept rows, 1 or more a number of rows; --train-size
keeps a seeded random subset of the training split. Writes train-, val- and test-*.tar and
classes.json (the class names); rerunning keeps complete shards. Exit code 2, with nothing
written, when the file is missing, empty or unreadable, lacks a named column, or has fewer than
two classes (each named). The format is described in meltr/data/converters/text_classification.py.
"""

import argparse
import sys

from meltr.data.converters.text_classification import (
    plan_text_classification,
    write_text_classification,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="the table (.csv, .tsv, .jsonl [.gz|.bz2])")
    parser.add_argument("--text-column", required=True)
    parser.add_argument("--label-column", required=True)
    parser.add_argument("--group-column", default=None, help="rows of a group share a split")
    parser.add_argument("--labels", default=None, help="comma-separated labels to keep, in order")
    parser.add_argument("--val-size", type=float, default=0.1)
    parser.add_argument("--test-size", type=float, default=0.1)
    parser.add_argument("--train-size", type=float, default=None, help="default: all the rest")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the subset")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--out", required=True, help="directory for the shards")
    args = parser.parse_args()
    labels = None if args.labels is None else [label.strip() for label in args.labels.split(",")]
    try:
        plan = plan_text_classification(
            args.input,
            args.text_column,
            args.label_column,
            args.group_column,
            labels,
            args.val_size,
            args.test_size,
            args.train_size,
            args.seed,
        )
        write_text_classification(plan, args.out, args.samples_per_shard)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"classes (classes.json): {plan.classes}")
    for split, rows in plan.splits.items():
        counts = [sum(row.label == label for row in rows) for label in range(len(plan.classes))]
        print(f"{split}: {len(rows)} texts (per class {counts})")
    print(
        f"skipped: {plan.skipped_empty_text} empty texts, {plan.skipped_empty_label} empty labels; "
        f"dropped labels {plan.dropped_labels}; {plan.unused_train_rows} training rows left out "
        f"by --train-size; shards in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
