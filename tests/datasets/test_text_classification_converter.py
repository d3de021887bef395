"""datasets/text_classification.py on small tables written here (CSV, TSV.gz, JSONL.bz2)."""

import bz2
import csv
import gzip
import json
import runpy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from meltr.data.converters.text_classification import (
    plan_text_classification,
    write_text_classification,
)
from meltr.data.decoders import TextLabel
from meltr.data.stream import eval_loader
from meltr.data.text import WordPieceTokenizer

REPO = Path(__file__).resolve().parents[2]
WORDS = 'great fun dull awful film plot , and " a b'.split()


def reviews() -> list[dict]:
    """12 movies x 4 rows: fresh / rotten reviews, a plot row per movie; then 2 rows with an empty
    text and 1 with an empty label."""
    rows = []
    for movie in range(12):
        for review in range(3):
            category = "fresh" if (movie + review) % 2 else "rotten"
            text = f'great, "fun" film {movie}.{review}' if category == "fresh" else "dull\nawful"
            rows.append({"category": category, "text": text, "movie_name": f"movie_{movie}"})
        rows.append({"category": "plot", "text": "a plot", "movie_name": f"movie_{movie}"})
    rows += [
        {"category": "fresh", "text": "  ", "movie_name": "movie_0"},
        {"category": "rotten", "text": "", "movie_name": "movie_1"},
        {"category": "", "text": "no label", "movie_name": "movie_2"},
    ]
    return rows


def write_table(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "wt", encoding="utf-8", newline="") as file:
        if ".jsonl" in path.suffixes:
            file.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(file, list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    return path


def convert(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "datasets/text_classification.py", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def exit_code(monkeypatch, *arguments: str) -> int:
    """The exit code of ``datasets/text_classification.py arguments``, run in this process."""
    monkeypatch.setattr(sys, "argv", ["text_classification.py", *arguments])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "datasets" / "text_classification.py"), run_name="__main__")
    return stop.value.code


def read_split(out: Path, split: str, tmp_path: Path) -> list[dict]:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    decoder = TextLabel(WordPieceTokenizer(vocab, 8))
    return list(eval_loader(out, decoder, 100, split=split, num_workers=0))


def test_the_command_line_splits_by_movie_and_counts_what_it_skips(tmp_path):
    table = write_table(tmp_path / "reviews.csv", reviews())
    out = tmp_path / "shards"
    done = convert(
        "--input", str(table), "--text-column", "text", "--label-column", "category",
        "--group-column", "movie_name", "--labels", "fresh,rotten",
        "--val-size", "6", "--test-size", "0.25", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 empty texts, 1 empty labels; dropped labels {'plot': 12}" in done.stdout
    assert json.loads((out / "classes.json").read_text()) == ["fresh", "rotten"]

    sizes = {}
    for split in ("train", "val", "test"):
        (batch,) = read_split(out, split, tmp_path)
        records = [
            {"text": t, "label": int(lab), "id": i}
            for t, lab, i in zip(batch["text"], batch["label"], batch["text_id"], strict=True)
        ]
        sizes[split] = len(records)
        for record in records:
            expected = 1 if record["text"] == "dull\nawful" else 0
            assert record["label"] == expected  # fresh = 0, rotten = 1, the --labels order
        assert batch["text_ids"].shape == (len(records), 8)
    assert sum(sizes.values()) == 36  # 12 movies x 3 reviews
    assert sizes["test"] >= 9 and sizes["val"] >= 6 and sizes["train"] > 0
    # Whole movies: each split's size is a multiple of 3 reviews.
    assert all(size % 3 == 0 for size in sizes.values())


def test_no_movie_lands_in_two_splits_and_the_split_is_seeded(tmp_path):
    table = write_table(tmp_path / "reviews.csv", reviews())
    arguments = ("text", "category", "movie_name", ["fresh", "rotten"], 0.2, 0.2)
    plan = plan_text_classification(table, *arguments, seed=3)
    groups = {split: {row.group for row in rows} for split, rows in plan.splits.items()}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"])
    assert not groups["val"] & groups["test"]
    again = plan_text_classification(table, *arguments, seed=3)
    assert again.splits == plan.splits
    other = plan_text_classification(table, *arguments, seed=4)
    assert {r.key for r in other.splits["test"]} != {r.key for r in plan.splits["test"]}
    counts = Counter(row.class_name for rows in plan.splits.values() for row in rows)
    assert counts == {"fresh": 18, "rotten": 18}


def test_train_size_keeps_a_seeded_subset_of_the_training_split(tmp_path):
    table = write_table(tmp_path / "reviews.csv", reviews())
    arguments = ("text", "category", None, None, 4, 4)
    everything = plan_text_classification(table, *arguments)
    subset = plan_text_classification(table, *arguments, train_size=10)
    assert everything.classes == ["fresh", "plot", "rotten"]  # sorted, none dropped
    assert len(subset.splits["train"]) == 10
    assert subset.unused_train_rows == len(everything.splits["train"]) - 10
    assert subset.splits["train"] == everything.splits["train"][:10]
    assert subset.splits["test"] == everything.splits["test"]


@pytest.mark.parametrize("name", ["reviews.tsv.gz", "reviews.jsonl.bz2", "reviews.csv.bz2"])
def test_tsv_jsonl_and_compressed_files_read_as_the_csv(tmp_path, name):
    rows = reviews()
    csv_plan = plan_text_classification(write_table(tmp_path / "r.csv", rows), "text", "category")
    table = write_table(tmp_path / name, rows, delimiter="\t" if ".tsv" in name else ",")
    plan = plan_text_classification(table, "text", "category")
    assert plan.splits == csv_plan.splits and plan.classes == csv_plan.classes


def test_a_rerun_keeps_the_shards(tmp_path):
    table = write_table(tmp_path / "reviews.csv", reviews())
    plan = plan_text_classification(table, "text", "category")
    write_text_classification(plan, tmp_path / "o", samples_per_shard=5)
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").glob("*.tar")}
    write_text_classification(plan, tmp_path / "o", samples_per_shard=5)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").glob("*.tar")} == first


@pytest.mark.parametrize(
    ("rows", "name", "columns", "culprit"),
    [
        (None, "reviews.csv", ("text", "stars"), "has no column(s) ['stars']"),
        ([{"category": "fresh", "text": "great"}] * 5, "one.csv", ("text", "category"),
         "label column 'category' has 1 class(es) ['fresh']"),
        ([], "empty.csv", ("text", "category"), "is empty"),
        (None, "reviews.txt", ("text", "category"), "unknown table format"),
        ("missing", "nowhere.csv", ("text", "category"), "does not exist"),
    ],
)  # fmt: skip
def test_bad_tables_exit_2_naming_the_culprit_and_write_nothing(
    tmp_path, monkeypatch, capsys, rows, name, columns, culprit
):
    path = tmp_path / name
    if rows is None:
        write_table(path.with_suffix(".csv"), reviews()).rename(path)
    elif rows == []:
        path.write_text("")
    elif rows != "missing":
        write_table(path, rows)
    out = tmp_path / "out"
    code = exit_code(
        monkeypatch, "--input", str(path), "--text-column", columns[0],
        "--label-column", columns[1], "--out", str(out),
    )  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and culprit in error and str(path) in error
    assert not out.exists()


def test_a_requested_label_the_table_lacks_is_named(tmp_path, monkeypatch, capsys):
    table = write_table(tmp_path / "reviews.csv", reviews())
    code = exit_code(
        monkeypatch, "--input", str(table), "--text-column", "text", "--label-column", "category",
        "--labels", "fresh,splat", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2 and "no row labelled ['splat']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
