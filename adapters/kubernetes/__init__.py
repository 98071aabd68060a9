"""The Kubernetes registry adapter and the CRD-backed config store (see ``docs/kubernetes.md``)."""
