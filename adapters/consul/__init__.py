"""meshfed: the Consul registry adapter (catalog and health followed with blocking queries)."""
