"""meshfed's bottom layer: mechanisms that several packages share and that know no feature.

Resource documents and the field reader behind every file/object/field error, watched config
files, and (as the other layers need them) the config-store interface, the monitoring server and
the lifecycle. It may import ``meshfed.registry`` and nothing else of ours.
"""
