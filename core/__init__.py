"""What every EMMA process shares: the error root, EMMA_* environment parsing, JSON logging, tracing.

The bottom layer: it imports nothing of EMMA's but the generated contracts (gen/), and every other
package (services, gateway, edge_daemon, launcher) may import it. See docs/architecture.md.
"""
