"""guest_agent: reads a container's cgroup inside the VM and answers kata-agent's StatsContainer.

Imports only the standard library, protobuf and shimstats' ttrpc/_proto modules:
never grpcio or psutil, so it fits a small guest image.
"""
