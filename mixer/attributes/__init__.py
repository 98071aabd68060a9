"""Attributes: their types, the wire codec (compressed bags, delta-encoded batches) and the
enrichment of a bag from the federated registry."""
