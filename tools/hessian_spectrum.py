"""The extreme eigenvalues of a recipe's inner Hessian at its starting point, what the solvers'
settings need (see meltr/benchmarks/hessian_spectrum.py).

python tools/hessian_spectrum.py --gin gin/demo/video_downstream.gin \\
    --CHECKPOINT=runs/demo/pretrain/checkpoints/last.pt [--batches 3] [--iterations 25]
"""

import sys

from meltr.benchmarks.hessian_spectrum import main

if __name__ == "__main__":
    sys.exit(main())
