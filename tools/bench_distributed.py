"""Throughput and per-rank memory of data-parallel MELTR training on CPU processes (see
meltr/benchmarks/distributed.py).

python tools/bench_distributed.py                      # 1 vs 2 processes, ddp and fsdp
python tools/bench_distributed.py --steps 20 --batch-size 32
"""

import sys

from meltr.benchmarks.distributed import main

if __name__ == "__main__":
    sys.exit(main())
