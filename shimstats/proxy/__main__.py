"""``python -m shimstats.proxy``: the same as the containerd-shim-kata-stats-v2 console script."""

import sys

from shimstats.proxy.cli import main

sys.exit(main())
