"""The archive's HTTP face: FastAPI application (DICOMweb, REST, metrics, health)."""
