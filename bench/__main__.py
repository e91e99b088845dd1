"""``python -m bench``: every benchmark in turn (the runc comparisons need root and containerd)."""

from __future__ import annotations

import os
import sys

from bench import costs, e2e, footprint, proxy, throughput
from tests.containerd_env import unavailable_reason


def main() -> int:
    costs.main([])
    footprint.main([])
    reason = unavailable_reason() if os.geteuid() == 0 else "not root"
    if reason is None:
        throughput.main(["--runc"])
        e2e.main([])
        proxy.main([])
    else:
        print(f"\nno runc comparison ({reason}); throughput of ours alone:")
        throughput.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
