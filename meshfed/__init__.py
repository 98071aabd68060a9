"""meshfed: meshfed."""
