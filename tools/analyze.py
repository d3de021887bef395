"""Draw the MELTR paper's analysis figures (3, 4, 6, 7) of a finished run (see
meltr/evidence/analysis.py).

python tools/analyze.py runs/quickstart-20250101-120000
python tools/analyze.py RUN_DIR --snapshot 200 --tasks itc mlm
"""

import sys

from meltr.evidence.analysis import main

if __name__ == "__main__":
    sys.exit(main())
