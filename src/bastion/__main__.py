"""``python -m bastion``: the same command line as ``bastion``."""

from __future__ import annotations

import sys

from bastion.cli import main

if __name__ == "__main__":
    sys.exit(main())
