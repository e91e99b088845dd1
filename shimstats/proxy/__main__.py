"""``python -m shimstats.proxy``: the same as the containerd-shim-kata-stats-v2 console script."""

from shimstats.proxy.cli import run

run()
