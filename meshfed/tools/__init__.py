"""Developer tools run from a checkout (``python -m meshfed.tools.<name>``)."""
