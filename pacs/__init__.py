"""The NDT archive core: configuration, DICONDE vocabulary, DICOM helpers, index and services.

The DIMSE face (``dicom_nodes``) and the HTTP face (``api``) translate their protocols into calls on
the services here; ``pacs.cli`` wires concrete backends and faces together.
"""

__version__ = "0.1.0"
