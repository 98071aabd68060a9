"""meshfed: the node-local Mixer client's pure logic (Check cache, Report batching)."""
