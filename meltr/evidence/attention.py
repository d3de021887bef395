"""Fig. 5 of ``tools/analyze.py``: how the meta network's loss tokens attend to each other.

Source. The project's issue 20 describes the MELTR paper's Figure 5 (Ko et al., CVPR 2023) as
the attention of the meta network's transformer, i.e. the relation between the tasks; the
paper's text could not be consulted when this was written (no copy was reachable from the
development machine), so the figure follows that description: the self-attention probabilities
``softmax(Q K^T / sqrt(d_head))`` between the T loss tokens of the meta network's encoder layer,
for every head and averaged over the heads, at the losses the run actually saw.

Numbers: for each logged training step whose losses are all finite, the meta network (the
analysed snapshot, eval mode) runs on that step's loss vector; the ``[heads, T, T]``
probabilities it computes (read at the input of its attention dropout, the identity in eval
mode) are averaged over those steps. Row i is what the token of task i attends to: each row
sums to 1. The same network sees every loss vector, so the map is the snapshot's, not a history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meltr.evidence.figures import new_figure


def observed_loss_vectors(losses: dict[str, np.ndarray], tasks: list[str]) -> np.ndarray:
    """``[N, T]``: the logged steps whose losses are all finite, tasks in ``tasks`` order."""
    stacked = np.stack([losses[task] for task in tasks], axis=1)
    return stacked[np.isfinite(stacked).all(axis=1)]


def has_attention(network: nn.Module) -> bool:
    """Whether ``network`` is a meta network with loss-token self-attention (a
    ``MetaLossTransformer``: ``attention.dropout`` receives the attention probabilities)."""
    attention = getattr(network, "attention", None)
    return isinstance(getattr(attention, "dropout", None), nn.Module)


def attention_maps(network: nn.Module, losses: np.ndarray) -> dict[str, Any]:
    """Fig. 5's numbers for ``network`` (eval mode) over the loss vectors ``losses`` ``[N, T]``:
    ``per_head`` ``[heads, T, T]`` and ``mean`` ``[T, T]`` (over the heads) of the attention
    probabilities averaged over the N vectors, and ``num_loss_vectors`` N."""
    captured: list[torch.Tensor] = []
    hook = network.attention.dropout.register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].detach())
    )
    try:
        with torch.no_grad():
            network(torch.tensor(losses, dtype=torch.float64))
    finally:
        hook.remove()
    (probabilities,) = captured  # [N, heads, T, T]
    per_head = probabilities.mean(dim=0).numpy()
    return {"per_head": per_head, "mean": per_head.mean(axis=0), "num_loss_vectors": len(losses)}


def plot_fig5(data: dict[str, Any], tasks: list[str], step: int, path: Path) -> None:
    """The head-averaged map (values written in each cell), then one map per head."""
    maps = [("mean over heads", np.asarray(data["mean"]))] + [
        (f"head {h}", np.asarray(m)) for h, m in enumerate(data["per_head"])
    ]
    size = 0.5 * len(tasks) + 1.5
    figure = new_figure(size * len(maps), size + 0.8)
    for index, (axes, (title, values)) in enumerate(
        zip(figure.subplots(1, len(maps), squeeze=False)[0], maps, strict=True)
    ):
        image = axes.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
        axes.set_xticks(range(len(tasks)), tasks, rotation=90)
        axes.set_yticks(range(len(tasks)), tasks if index == 0 else [])
        axes.set_title(title)
        if index == 0:
            axes.set_xlabel("key (attended) task")
            axes.set_ylabel("query task")
            for (row, column), value in np.ndenumerate(values):
                color = "black" if value > 0.6 else "white"
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", color=color)
    figure.colorbar(image, ax=figure.axes, shrink=0.8)
    figure.suptitle(
        f"meta-network self-attention between the loss tokens (step {step}, averaged over "
        f"{data['num_loss_vectors']} logged loss vectors)"
    )
    figure.savefig(path, dpi=100)
