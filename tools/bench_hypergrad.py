"""The hypergradient solvers and products backends on a small transformer on CPU: time, memory
and error against an exact reference (see meltr/benchmarks/hypergrad.py).

python tools/bench_hypergrad.py [--quick] [--threads N] [--repeats N]
"""

import sys

from meltr.benchmarks.hypergrad import main

if __name__ == "__main__":
    sys.exit(main())
