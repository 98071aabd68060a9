"""Sidecar injection: the pure pod mutation, the admission webhook and the offline path."""
