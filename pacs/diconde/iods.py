"""What the standard says about a SOP class that the archive needs to check an object."""

from __future__ import annotations

from functools import cache

from pydicom.uid import UID


@cache
def is_image_storage(sop_class_uid: str) -> bool:
    """An image IOD (DX, CR, CT, Enhanced CT, US, Secondary Capture, ...): Pixel Data is required.

    Taken from the SOP class names of PS3.4 Annex B ("... Image Storage", as pydicom's UID
    dictionary carries them): every such IOD includes the Image Pixel module (or Float / Double
    Float Pixel Data) as mandatory. Unknown and non-image classes are not checked.
    """
    if not sop_class_uid:
        return False
    name = UID(sop_class_uid).name
    return "Image Storage" in name and "Presentation State" not in name
