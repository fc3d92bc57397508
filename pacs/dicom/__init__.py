"""DICOM encoding and decoding shared by every face of the archive."""

#: Our implementation class UID (PS3.7 D.3.3.2), a UUID-derived UID (PS3.5 B.2) fixed for the project,
#: and the version name; in every association and in every file meta the archive writes.
IMPLEMENTATION_CLASS_UID = "2.25.160544309812356467651339735329302712049"
IMPLEMENTATION_VERSION_NAME = "NDT_ARCHIVE_01"
