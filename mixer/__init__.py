"""Mixer: policy checks, quotas and telemetry for every call in the mesh.

Istio 0.2's Mixer, rebuilt: proxies (through the node-local client) send attribute bags to
``Check`` and ``Report``; rules whose ``match`` expression holds turn attributes into template
instances and hand them to handlers (``denier``, ``listchecker``, ``memquota``, ``prometheus``,
...). Handlers are plugins found through the ``meshfed.mixer.handlers`` entry-point group; their
contract is :mod:`meshfed.mixer.handlers.api`, the instances they receive are
:mod:`meshfed.mixer.templates`.
"""
