"""From a raw (fake) MSRVTT release and an official-format checkpoint to a finished run of
gin/allinone_msrvtt.gin, through the two command-line tools a researcher uses."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from fake_msrvtt import CAPTIONS_PER_VIDEO, NUM_VIDEOS, TEST, caption, make_release
from official_allinone import official_state_dict, save_lightning

REPO = Path(__file__).resolve().parents[2]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(
    max_text_len=40,  # the recipe's MAX_TEXT_LEN, kept
    image_size=32,
    patch_size=16,
    width=32,
    depth=1,
    heads=2,
    mlp_ratio=4.0,
    proj_dim=16,
)


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def write_vocab(path: Path) -> int:
    words = sorted(
        {
            word
            for i in range(NUM_VIDEOS)
            for j in range(CAPTIONS_PER_VIDEO)
            for word in caption(f"video{i}", j).split()
        }
    )
    path.write_text("\n".join(SPECIALS + words) + "\n")
    return len(SPECIALS) + len(words)


def test_release_converts_and_trains_through_the_msrvtt_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    release = make_release(tmp_path / "MSRVTT")
    shards = tmp_path / "shards"
    converted = run("datasets/msrvtt.py", "--root", str(release), "--out", str(shards))
    assert converted.returncode == 0, converted.stderr

    vocab = tmp_path / "vocab.txt"
    sizes = dict(TINY, vocab_size=write_vocab(vocab))
    official = official_state_dict(sizes, frames=3)
    checkpoint = save_lightning(tmp_path, {f"model.{k}": v for k, v in official.items()})

    output = tmp_path / "run"
    model_sizes = [f"--AllInOne.{k}={v}" for k, v in TINY.items() if k != "max_text_len"]
    trained = run(
        "tools/train.py",
        "--gin",
        "gin/allinone_msrvtt.gin",
        f"--DATA_DIR={shards}",
        f"--VOCAB={vocab}",
        f"--CHECKPOINT={checkpoint}",
        "--IMAGE_SIZE=32",
        "--RESIZE=36",
        *model_sizes,
        # A zero learning rate (AdamW's decay scales with it) leaves the backbone exactly as
        # loaded, so the end weights show where every official tensor landed.
        "--backbone/AdamW.lr=0.0",
        "--train.steps=4",
        "--train.batch_size=4",
        "--train.eval_every=4",
        "--train.checkpoint_every=4",
        "--train.log_every=2",
        "--train_loader.num_workers=0",
        "--eval_loader.num_workers=0",
        "--output",
        str(output),
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (
        "2 missing, 0 unexpected" in trained.stdout
    )  # vtm_score.{weight,bias}: not in the release
    assert "vtm_score.weight" in trained.stderr

    weights = torch.load(output / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key, value in official.items():
        if key != "text_embeddings.position_ids":
            torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)

    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    assert final["step"] == 4
    assert 0.0 <= final["test/t2v_R@1"] <= 100.0
    assert final["test/t2v_MnR"] <= len(TEST)

    # The same official file through tools/inspect_checkpoint.py: the report the loader logged.
    paths = [f"--DATA_DIR={shards}", f"--VOCAB={vocab}", *model_sizes]
    paths += ["--IMAGE_SIZE=32", "--RESIZE=36"]
    inspected = run(
        "tools/inspect_checkpoint.py",
        "--gin",
        "gin/allinone_msrvtt.gin",
        "--checkpoint",
        str(checkpoint),
        *paths,
    )
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    report = json.loads(inspected.stdout)
    assert sorted(report["missing"]) == ["vtm_score.bias", "vtm_score.weight"]
    assert report["unexpected"] == [] and "text_embeddings.position_ids" in report["adapted"]
    assert len(report["loaded"]) == len(official) - 1

    # A Lightning file that also pickles Python objects (old releases' hyperparameters) is refused
    # by tools/evaluate.py unless train.trust_checkpoint_pickle, and then evaluates.
    pickled = tmp_path / "pickled.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in official.items()},
            "hparams": argparse.Namespace(lr=1e-4),  # old Lightning files pickle objects
        },
        pickled,
    )
    evaluate = ["tools/evaluate.py", "--gin", "gin/allinone_msrvtt.gin", "--checkpoint"]
    refused = run(*evaluate, str(pickled), *paths)
    assert refused.returncode == 2 and "train.trust_checkpoint_pickle" in refused.stderr
    trusted = run(*evaluate, str(pickled), *paths, "--train.trust_checkpoint_pickle=True")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    metrics = json.loads((tmp_path / "pickled.ckpt.test-1views.json").read_text())
    assert metrics["test/num_items"] == len(TEST) and metrics["test/num_corrupt"] == 0
    # The official weights evaluate as the run's first evaluation would have: identical weights.
    assert metrics["test/t2v_R@1"] == final["test/t2v_R@1"]
