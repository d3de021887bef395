"""Meta-step cost at the paper's model sizes: markdown tables of time and memory per method (see
meltr/benchmarks/scale.py).

python tools/bench_scale.py                        # All-in-one ViT-B on CPU (~9 minutes)
python tools/bench_scale.py --models small transformer --rows plain release central one_sided
python tools/bench_scale.py --accuracy --models small transformer allinone
python tools/bench_scale.py --device cuda --bf16 --sdpa flash --checkpointing
"""

import sys

from meltr.benchmarks.scale import main

if __name__ == "__main__":
    sys.exit(main())
