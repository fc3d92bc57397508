"""DICOMweb (PS3.18) under ``/dicom-web``."""
