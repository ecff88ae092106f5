"""`python -m vlmlab ...`: see vlmlab/cli.py."""

import sys

from .cli import main

sys.exit(main())
