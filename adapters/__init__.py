"""meshfed: adapters."""
