"""`python -m retrieval ...` (and `torchrun -m retrieval ...`) runs the `retrieval` CLI."""

import sys

from retrieval.cli import main

sys.exit(main())
