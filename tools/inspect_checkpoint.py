"""What a recipe's checkpoint loader makes of a file, as JSON (missing, unexpected, adapted keys).

python tools/inspect_checkpoint.py --gin gin/allinone_msrvtt.gin \
  --checkpoint all-in-one-plus-224.ckpt --gin_param "VOCAB='/data/vocab.txt'" \
  --gin_param "train.trust_checkpoint_pickle = True"
"""

import sys

from meltr.train.inspect_cli import main

if __name__ == "__main__":
    sys.exit(main())
