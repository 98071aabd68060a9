"""meshfed: adapters/static."""
