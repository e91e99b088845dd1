"""`shimstats guest-test`: boot a real guest kernel under qemu, run our guest agent in it, verify each phase.

Host side: ``image`` (kernel, modules and initramfs, cached), ``qemu`` (the VM), ``session`` (the run:
adapters, Stats per phase, verdicts), ``checks`` (figures beyond CRI's), ``report`` and ``fixtures``. Guest
side: ``guest/init.sh`` (PID 1, busybox) and ``inguest`` (the phases, run by the host's own Python shared
over 9p). ``protocol`` is the control channel both sides speak; ``phases`` names what runs in each phase.
"""
