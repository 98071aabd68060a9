"""Mixer config: ``config.istio.io/v1alpha2`` resources parsed (:mod:`.parse`), then compiled
into a snapshot the runtime serves (:mod:`.compile`), from files or CRDs (:mod:`.store`)."""
