"""`python -m embslim ...` is the `embslim` command; launchers take it as a module:
`torchrun --nproc_per_node 2 -m embslim run ...`."""

import sys

from embslim.pipeline.cli import main

sys.exit(main())
