"""Default Mixer config shipped with meshfed (Istio 0.2's attribute manifests)."""
