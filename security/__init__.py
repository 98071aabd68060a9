"""meshfed: security."""
