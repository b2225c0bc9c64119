"""Evaluation tools for the legal n-gram mixture (issue 6): a slow reference (reference.py),
legality probes for any per-token scorer (probe.py) and an order / mixture-weight sweep (sweep.py).
The fast implementation is imported in one place, _impl.py."""
