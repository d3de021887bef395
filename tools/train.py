"""Fine-tune a video backbone with MELTR from a gin recipe (see docs/training.md).

python tools/train.py --gin gin/quickstart.gin
"""

import sys

from meltr.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
