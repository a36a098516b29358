"""``python -m training.study``: writes the report, as ``clead-train report`` does."""

import sys

from training.study.report import main

if __name__ == "__main__":
    sys.exit(main())
