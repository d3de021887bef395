"""Compare loss-combination methods on one recipe over seeds (see meltr/evidence/compare_cli.py).

python tools/compare.py --gin gin/quickstart.gin --seeds 3 --output runs/compare \
    --method multi-task=gin/baselines/mtl.gin --method meltr=
"""

import sys

from meltr.evidence.compare_cli import main

if __name__ == "__main__":
    sys.exit(main())
