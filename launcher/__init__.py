"""The composition root: the `emma` command line and `emma up`, which wire services, gateway and edges.

The top layer: nothing imports it. See docs/architecture.md.
"""
