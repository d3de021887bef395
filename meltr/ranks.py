"""Whether this process is one of several data-parallel ranks (the one test every module uses)."""

from __future__ import annotations

import torch.distributed as dist


def is_data_parallel() -> bool:
    """True when a torch.distributed process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
