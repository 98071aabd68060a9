"""Mixer's handlers (Istio 0.2's "adapters"): built-in kinds and the plugin contract."""
