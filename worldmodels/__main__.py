"""`python -m worldmodels` (and `torchrun -m worldmodels`) run the command line."""

import sys

from .cli import main

sys.exit(main())
