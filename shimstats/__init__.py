"""shimstats: make Kata Containers report container memory the way containerd and the kubelet expect.

Host side: the ttrpc stack, the translation core (agent stats -> containerd Metrics),
the Task/Stats adapter, the proxy shim, the fake containerd client and the CLI.
"""

__version__ = "0.1.0"
