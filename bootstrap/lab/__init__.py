"""The vSphere lab: govmomi's simulator as vCenter, with Linux and Windows stand-in
guests in network namespaces on one machine. See ``bootstrap/lab/README.md``."""
