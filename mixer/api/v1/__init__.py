"""Generated code of istio.mixer.v1 (see ../generate.py); do not edit."""
