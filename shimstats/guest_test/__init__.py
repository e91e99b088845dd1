"""`shimstats guest-test`: boot a real guest kernel under qemu, run our guest agent in it, verify each phase.

Host side: ``image`` (kernel, modules and initramfs, cached; ``cpio`` and ``modules`` under it), ``qemu``
(the VM's command line, disks, 9p shares, accelerator), ``session`` (one boot: adapters, Stats per phase,
saved fixtures), ``evaluate`` and ``checks`` (the verdicts), ``report``. Guest side: ``guest/init.sh``
(PID 1, busybox), ``inguest`` (the phases, run by the host's own Python shared over 9p) and ``worker``
(the container's workload). Both sides share ``protocol`` (the control channel) and ``phases``.
"""
