"""containerd-shim-kata-stats-v2: the proxy shim containerd launches in front of the Kata shim.

containerd starts it as the runtime ``io.containerd.kata-stats.v2``. Its ``start`` action starts the real
shim (``inner_shim``: containerd-shim-kata-v2 in production, containerd-shim-runc-v2 in our tests) with the
same arguments, then a small server of ours that forwards every ``containerd.task.v2.Task`` call to the
real shim untouched and answers Stats itself from the guest agent through the adapter core. One runtime
entry in containerd's config is the whole deployment (docs/proxy-shim.md).

Modules, one job each:
* ``config``: the TOML file (inner shim, agent address template, metrics format, fallback);
* ``options``: containerd's runtime options (an Any on stdin and in Create), and what the inner shim gets
  (read and written by shimstats.protowire, without the protobuf runtime);
* ``logfmt``: the shape of our log lines (logfmt, as containerd's own), and the ``start`` and ``delete``
  actions' log, written without the logging module;
* ``logs``: where the logs go (the bundle's ``log`` fifo, as containerd copies shim logs), and the serving
  process's logging handler;
* ``sockets``: socket naming and stale-socket cleanup;
* ``bundle``: containerd's shim flags, the bundle's state file and the actions' error;
* ``launch``: the ``start`` action (the inner shim's start, our socket, bundle files);
* ``fork``: the serving process as a fork of ``start``, handed its socket and settings;
* ``delete``: the ``delete`` action, which becomes the inner shim's own when nothing is left after it;
* ``relay``: the serving process (lifetime tied to the inner shim's) and its Task service, which forwards
  calls and answers Stats, on threads: it never imports asyncio (memory per pod, start-up before Create);
* ``fallback``: the relay's Stats rules (request id, fallback policy, warn once);
* ``cli``: the command line containerd calls.
"""

BINARY = "containerd-shim-kata-stats-v2"
"""The executable containerd looks up for RUNTIME_TYPE (``containerd-shim-<name>-<version>``)."""
RUNTIME_TYPE = "io.containerd.kata-stats.v2"
"""The runtime name to give containerd (``runtime_type`` in CRI, ``ctr run --runtime``)."""
CONFIG_ENV = "SHIMSTATS_CONFIG"
"""Environment variable naming the proxy's TOML file (containerd's environment reaches its shims)."""

__all__ = ["BINARY", "CONFIG_ENV", "RUNTIME_TYPE"]
