"""A recipe's task metrics of a checkpoint on one split of its data (see docs/training.md).

python tools/evaluate.py --gin gin/quickstart.gin --checkpoint runs/x/checkpoints/best.pt
"""

import sys

from meltr.train.evaluate_cli import main

if __name__ == "__main__":
    sys.exit(main())
