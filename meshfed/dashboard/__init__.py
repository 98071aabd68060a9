"""The hub's web dashboard: catalog, registries, proxies, Mixer rules and the service graph.

Part of the composition root (it reads Pilot's and Mixer's state, which no layer may join):
:class:`~meshfed.dashboard.component.Dashboard` is a hub component serving ``/dashboard`` on the
monitoring port; its page and assets are package data under ``static/``.
"""

from meshfed.dashboard.component import Dashboard

__all__ = ["Dashboard"]
