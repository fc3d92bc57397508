"""The archive's DIMSE face: pynetdicom application entities that turn DICOM messages into service calls.

One module per DIMSE service (``store``), plus the association policy and the server plumbing.
Handlers get the services they call as bound arguments and keep no state of their own.
"""
