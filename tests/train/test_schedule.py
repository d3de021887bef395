import pytest
import torch

from meltr.train.schedule import warmup_linear_schedule


def expected_lr(base: float, update: int, total: int, warmup_fraction: float) -> float:
    """The documented schedule, written out independently: linear warmup, then linear decay."""
    warmup = int(round(warmup_fraction * total))
    if update < warmup:
        return base * (update + 1) / warmup
    return base * (total - update) / (total - warmup)


@pytest.mark.parametrize(("total", "fraction"), [(50, 0.1), (7, 0.3), (10, 0.0)])
def test_lr_of_every_update_matches_formula(total, fraction):
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([weight], lr=3e-4)
    schedule = warmup_linear_schedule(optimizer, total_steps=total, warmup_fraction=fraction)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([expected_lr(3e-4, s, total, fraction) for s in range(total)])
    assert min(seen) > 0


def test_schedule_state_round_trips():
    weight = torch.nn.Parameter(torch.zeros(1))
    first = warmup_linear_schedule(torch.optim.SGD([weight], lr=1.0), total_steps=20)
    for _ in range(6):
        first.optimizer.step()
        first.step()
    second = warmup_linear_schedule(torch.optim.SGD([weight], lr=1.0), total_steps=20)
    second.load_state_dict(first.state_dict())
    assert second.get_last_lr() == first.get_last_lr() == [expected_lr(1.0, 6, 20, 0.1)]


@pytest.mark.parametrize(("total", "fraction"), [(0, 0.1), (10, 1.0), (10, -0.1)])
def test_bad_arguments_are_named(total, fraction):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="total_steps|warmup_fraction"):
        warmup_linear_schedule(optimizer, total_steps=total, warmup_fraction=fraction)


def test_constant_and_multistep_schedules_follow_their_formulas():
    from meltr.train.schedule import constant_schedule, multistep_schedule

    for make, expected in (
        (lambda o: constant_schedule(o, total_steps=8), [1.0] * 8),
        (lambda o: multistep_schedule(o, 8, (0.5, 0.75), 0.1), [1.0] * 4 + [0.1] * 2 + [0.01] * 2),
    ):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        lr_schedule = make(optimizer)
        seen = []
        for _ in range(8):
            seen.append(optimizer.param_groups[0]["lr"] / 2.0)
            optimizer.step()
            lr_schedule.step()
        assert seen == pytest.approx(expected)
