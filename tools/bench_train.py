"""Training cost of MELTR's solvers against the baselines, the paper's Table 8 on our data (see
meltr/benchmarks/training.py).

python tools/bench_train.py            # the full table (about 25 minutes on 2 busy cores)
python tools/bench_train.py --quick    # smoke mode: 2 seeds, 20 steps, batch 8
python tools/bench_train.py --output runs/bench && python tools/bench_train.py --tabulate runs/bench
"""

import sys

from meltr.benchmarks.training import main

if __name__ == "__main__":
    sys.exit(main())
