"""The archive's HTTP face: FastAPI application (health and OpenAPI now; DICOMweb and REST to come)."""
