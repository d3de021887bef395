"""Export a sharded training checkpoint as one ``torch.save`` file, for evaluation or sharing.

python tools/export_checkpoint.py RUN_DIR/checkpoints/step-00000120 model.pt
python tools/export_checkpoint.py RUN_DIR/checkpoints model.pt       # the latest checkpoint

The output holds the backbone's full state dict (parameter and buffer names as in the unwrapped
model, loadable with ``model.load_state_dict``); ``--with-learner`` adds the replicated learner
state (meta network, meta optimizer, step) under the key ``"learner"`` and nests the weights
under ``"model"``. Runs in one process; needs no process group and no GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from meltr.train.sharded import REPLICATED, latest_sharded


def export_checkpoint(checkpoint: Path, output: Path, with_learner: bool = False) -> Path:
    """Write the model weights of ``checkpoint`` (a ``step-*`` directory, or a checkpoints
    directory whose latest checkpoint is taken) to ``output``; returns the checkpoint used."""
    resolved = checkpoint if (checkpoint / "model").is_dir() else latest_sharded(checkpoint)
    if resolved is None or not (resolved / "model").is_dir():
        raise FileNotFoundError(f"{checkpoint}: neither a checkpoint nor a directory holding one")
    with tempfile.TemporaryDirectory() as scratch:
        merged = Path(scratch) / "model.pt"
        dcp_to_torch_save(resolved / "model", merged)
        weights = torch.load(merged, map_location="cpu", weights_only=True)
    exported = weights
    if with_learner:
        learner = torch.load(resolved / REPLICATED, map_location="cpu", weights_only=True)
        exported = {"model": weights, "learner": learner}
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(exported, output)
    return resolved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a step-* directory or a checkpoints dir")
    parser.add_argument("output", type=Path, help="the single .pt file to write")
    parser.add_argument(
        "--with-learner", action="store_true", help="also store the replicated learner state"
    )
    args = parser.parse_args(argv)
    used = export_checkpoint(args.checkpoint, args.output, args.with_learner)
    print(f"exported {used} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
