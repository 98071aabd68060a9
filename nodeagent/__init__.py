"""meshfed: nodeagent."""
