"""Fine-tune a video backbone with MELTR from a gin recipe (see docs/training.md).

python tools/train.py --gin gin/quickstart.gin
torchrun --nproc_per_node=8 tools/train.py --gin ... --gin_param 'Distributed.strategy="fsdp"'
"""

import sys

import torch.distributed as dist

from meltr.train.cli import main
from meltr.train.distributed import exit_process

if __name__ == "__main__":
    code = main()
    if dist.is_torchelastic_launched():
        exit_process(code)
    sys.exit(code)
