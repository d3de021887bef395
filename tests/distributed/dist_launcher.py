"""Run a function on several CPU processes joined by a gloo process group, as torchrun would."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch
import torch.multiprocessing as mp

from meltr.train.distributed import exit_process


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_ranks(function: Callable, world_size: int, *args: object) -> None:
    """Call ``function(*args)`` on ``world_size`` fresh processes with torchrun's environment set
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free port). ``function`` starts the
    process group itself (``init_distributed``) and leaves it; the process then ends through
    ``exit_process`` (see there why). Raises if any process fails or dies."""
    port = free_port()
    mp.start_processes(
        _rank_entry,
        args=(world_size, port, function, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )


def _rank_entry(rank: int, world_size: int, port: int, function: Callable, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    function(*args)
    exit_process(0)
