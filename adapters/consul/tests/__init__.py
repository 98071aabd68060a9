"""Unit tests of the Consul adapter (pure: no Consul server)."""
