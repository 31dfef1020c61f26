"""Deployment safety: lint, lock timeouts with retry, preflight, duration estimates, staging proof.

Kept import-free so that :mod:`faber_core.models` can use :mod:`faber_core.safety.models`;
the workflow calls :mod:`faber_core.safety.checks`. See docs/safety.md.
"""
