"""Mixer's wire API: ``istio.mixer.v1`` protos (field-compatible with Istio 0.2), their
generated code (``v1/*_pb2.py``), and the global dictionary both ends of the API share."""
