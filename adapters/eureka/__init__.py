"""meshfed: adapters/eureka — federate a Eureka registry (see docs/eureka.md)."""
