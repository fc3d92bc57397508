"""The archive's own REST API under ``/api``."""
