"""``python -m training.cli ...`` (and ``torchrun -m training.cli fit ...``) is ``clead-train ...``."""

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
