"""`python -m attnseg` (also what `torchrun -m attnseg train ...` runs)."""

import sys

from attnseg.cli.main import main

sys.exit(main())
