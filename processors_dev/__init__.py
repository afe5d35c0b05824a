"""Development tooling of the insurance integration processors: development brokers, sandbox
external services, the demo and sample events.

The product (``processors``) never imports this package (``tests/unit/test_structure.py``);
this package uses the product freely.
"""
