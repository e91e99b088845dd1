"""What today's Kata shims answer containerd for the same agent reply, defects included.

``compare`` shows these next to our translation, and the regression tests prove each defect is real in the
emulation and absent from ``shimstats.translate``. One module per shim, each naming the upstream file it
mirrors; they reproduce exactly the defects that show in the Metrics (docs/spec/mapping.md §3.2/§3.3,
§3.4), no more and no fewer. Defects outside the Metrics (locking, error codes, Connect) belong
to the serving side and are not here.
"""
