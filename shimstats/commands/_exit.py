"""The exit codes every `shimstats` command shares, and the table `--help` and the README show for them."""

from __future__ import annotations

OK = 0
"""Checked, and it agrees (or the server stopped cleanly)."""
FOUND_WRONG = 1
"""Checked and found wrong or unhealthy; for the servers (serve, exporter): they could not serve."""
CANNOT_CHECK = 2
"""Could not check: bad input (flags, files, addresses) or a source that is unreachable or refuses."""
INTERRUPTED = 128 + 2
"""Ctrl-C (SIGINT = 2), at any moment; SIGTERM gives 128 + 15 the same way. No import of ``signal`` here:
shimstats.cli imports this module before its guard is up, where every import is time Ctrl-C is unguarded."""
OUTPUT_CLOSED = 128 + 13
"""The reader of stdout went away (``| head -1``): what a shell reports for a tool stopped by SIGPIPE (13)."""

TABLE = f"""\
exit codes (the same meaning in every command):
  {OK}    ok: checked and agrees; a server stopped by SIGTERM or Ctrl-C after serving
  {FOUND_WRONG}    checked and found wrong or unhealthy (a mismatch, an error status from the shim);
       serve and exporter: could not serve (address taken)
  {CANNOT_CHECK}    could not check: bad flags or input files, unreachable or refusing agent, shim or cgroup,
       an answer that does not decode
  {INTERRUPTED}  interrupted by Ctrl-C (SIGINT); 143 for SIGTERM where a command cleans up first
  {OUTPUT_CLOSED}  stdout was closed early (e.g. `| head -1`): the rest of the output is dropped quietly"""
