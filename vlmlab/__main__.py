"""`python -m vlmlab ...`: see vlmlab/cli/."""

import sys

from .cli import main

sys.exit(main())
