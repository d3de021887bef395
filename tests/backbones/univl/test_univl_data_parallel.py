import torch
from univl_dist_workers import (
    WEIGHTS,
    exact_losses,
    global_batch,
    local_slice,
    losses_worker,
    tiny_float64_model,
)

from meltr.backbones.univl import UniVLLoss
from meltr.train.distributed import spawn_local_ranks

TOLERANCE = dict(rtol=1e-10, atol=1e-12)


def test_losses_on_two_fsdp_ranks_match_one_process(tmp_path):
    """joint / m_joint over gathered features, cmlm / cmfm over global counts (cmfm against the
    frames of both ranks), decoder / m_decoder over equal shards (or over the global count of
    real targets): the reduced losses and the gradients equal the single-process values of the
    global batch. align is rank-local: its reduced value is the mean of the halves' losses."""
    batch = global_batch()
    halves = [local_slice(batch, rank, 2) for rank in range(2)]
    assert halves[0]["mlm_labels"].ne(-100).sum() != halves[1]["mlm_labels"].ne(-100).sum()
    assert (
        halves[0]["frame_mask_labels"].ne(-100).sum()
        != halves[1]["frame_mask_labels"].ne(-100).sum()
    )
    spawn_local_ranks(losses_worker, 2, tmp_path)

    model = tiny_float64_model().eval()
    vector = exact_losses(model, batch)
    (vector @ WEIGHTS).backward()
    align = UniVLLoss(("align",))
    local_align = torch.stack([align(model, half)["align"] for half in halves]).mean()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["losses"], vector.detach(), **TOLERANCE)
        torch.testing.assert_close(got["align"], local_align.detach(), **TOLERANCE)
        for name, parameter in model.named_parameters():
            grad = torch.zeros_like(parameter) if parameter.grad is None else parameter.grad
            torch.testing.assert_close(got["grads"][name], grad, **TOLERANCE, msg=name)
