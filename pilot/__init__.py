"""meshfed: pilot."""
