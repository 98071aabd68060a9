"""meshfed: mixer."""
