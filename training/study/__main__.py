"""``python -m training.study``: writes the report, as ``clead-train report`` does."""

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
