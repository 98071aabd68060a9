"""The ``workloads`` registry: VMs registered by their node agents, signed with their own SVIDs.

:mod:`.protocol` is the request format shared with the node agent; :mod:`.server` is the hub's
side, a registry adapter that is also a hub component (it serves the registration routes).
"""
