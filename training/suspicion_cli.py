"""Deprecated alias of ``training.cli.suspicion`` (moved there); it will be removed."""

from training._moved import forward

__getattr__ = forward(__name__, "training.cli.suspicion")

if __name__ == "__main__":  # python -m training.suspicion_cli ... (the old spelling of clead-train suspicion)
    import sys

    from training.cli.suspicion import main

    sys.exit(main())
