"""``dciodvfy_errors`` is what tells the suite that generated objects are valid: it must see every
error dciodvfy reports, in both of the forms dciodvfy writes them, and refuse to answer "no errors"
when dciodvfy did not check the file at all. And the non-image generators (Raw Data, Encapsulated
PDF) make objects dciodvfy accepts.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pydicom
import pytest

from tests.support import factories as f


def broken_private_creator(tmp_path: Path) -> Path:
    """A radiograph whose Private Creator (0009,0010) is written as OB, not LO: dciodvfy reports it
    only as ``(0x0009,0x0010) LO PrivateCreator  - Error - Private creator is not LO VR ...`` and
    still exits with status 0."""
    ds = f.diconde_dx(rows=32, columns=32)
    ds.add_new(0x00090010, "OB", b"ACME")
    return f.write(ds, tmp_path / "private-creator-ob.dcm")


def test_generated_radiograph_has_no_errors(tmp_path: Path) -> None:
    assert f.dciodvfy_errors(f.write(f.diconde_dx(rows=32, columns=32), tmp_path / "dx.dcm")) == []


def test_error_reported_only_after_a_tag_is_caught(tmp_path: Path) -> None:
    errors = f.dciodvfy_errors(broken_private_creator(tmp_path))
    assert len(errors) == 1, errors
    assert errors[0].startswith("(0x0009,0x0010)")
    assert re.search(r"- Error - Private creator is not LO VR", errors[0])


def test_bad_value_length_after_a_tag_is_caught(tmp_path: Path) -> None:
    """An odd value length, as dciodvfy reports it: ``(0xfffc,0xfffc) OB ... - Error - Bad Value Length``."""
    good = f.part10_bytes(f.diconde_dx(rows=32, columns=32))
    odd_padding = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 1) + b"\0"  # Data Set Trailing Padding
    path = tmp_path / "odd-length.dcm"
    path.write_bytes(good + odd_padding)
    errors = f.dciodvfy_errors(path)
    assert any(e.startswith("(0xfffc,0xfffc)") and "Error - Bad Value Length" in e for e in errors), errors


def test_missing_attribute_errors_are_caught(tmp_path: Path) -> None:
    errors = f.dciodvfy_errors(f.write(f.diconde_dx(rows=32, columns=32, Modality=None), tmp_path / "m.dcm"))
    assert any("Missing attribute" in e and "<Modality>" in e for e in errors), errors


def test_warnings_about_a_tag_are_not_errors(tmp_path: Path) -> None:
    """``(0x0009,0x1010)  ?  - Warning - Private tag without owner``: a warning, not an error."""
    ds = f.diconde_dx(rows=32, columns=32)
    ds.add_new(0x00091010, "LO", "no creator")
    assert f.dciodvfy_errors(f.write(ds, tmp_path / "warning.dcm")) == []


def fake_dciodvfy(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "dciodvfy"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("kill -KILL $$", id="killed-by-a-signal"),
        pytest.param("echo 'Error - Missing attribute'; exit 2", id="exit-status-2"),
        pytest.param("echo 'Warning - only this'; exit 1", id="status-1-without-an-error-line"),
        # the real dciodvfy on a file it cannot open: "Abort - File open for read failed", status 1
        pytest.param('exec "{real}" "$1.missing"', id="abort"),
    ],
)
def test_a_check_that_did_not_happen_is_not_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    path = f.write(f.diconde_dx(rows=32, columns=32), tmp_path / "dx.dcm")
    script = fake_dciodvfy(tmp_path, body.format(real=f.dciodvfy_path()))
    monkeypatch.setattr(f, "dciodvfy_path", lambda: script)
    with pytest.raises(RuntimeError, match="dciodvfy did not check dx.dcm"):
        f.dciodvfy_errors(path)


# -- the non-image generators -------------------------------------------------------------------------
def test_raw_data_passes_dciodvfy_and_carries_its_payload(tmp_path: Path) -> None:
    ds = f.raw_data(scans=4, samples=100)
    path = f.write(ds, tmp_path / "raw.dcm")
    assert f.dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66"
    assert "PixelData" not in back and "NumberOfFrames" not in back
    block = back.private_block(0x0009, f.RAW_DATA_CREATOR)
    assert block[0x10].VR == "OB" and len(block[0x10].value) == 4 * 100 * 2
    assert (block[0x11].value, block[0x12].value) == (4, 100)


def test_encapsulated_pdf_passes_dciodvfy_and_carries_a_real_pdf(tmp_path: Path) -> None:
    pdf = f.minimal_pdf("Weld 3 accepted")
    path = f.write(f.encapsulated_pdf(document=pdf), tmp_path / "pdf.dcm")
    assert f.dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert (back.Modality, back.MIMETypeOfEncapsulatedDocument) == ("DOC", "application/pdf")
    assert "PixelData" not in back
    document = back.EncapsulatedDocument[: back.EncapsulatedDocumentLength]
    assert document == pdf and len(back.EncapsulatedDocument) % 2 == 0


def test_minimal_pdf_cross_reference_points_at_its_objects() -> None:
    pdf = f.minimal_pdf()
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.endswith(b"%%EOF\n")
    startxref = int(re.search(rb"startxref\n(\d+)\n", pdf).group(1))  # type: ignore[union-attr]
    assert pdf[startxref:].startswith(b"xref\n0 6\n")
    offsets = [int(o) for o in re.findall(rb"(\d{10}) 00000 n ", pdf)]
    assert [pdf[o:].split(b"\n", 1)[0] for o in offsets] == [b"%d 0 obj" % n for n in range(1, 6)]
    length = int(re.search(rb"/Length (\d+) >>\nstream\n", pdf).group(1))  # type: ignore[union-attr]
    stream = pdf.split(b"stream\n", 1)[1]
    assert stream[length:].startswith(b"\nendstream")
    with pytest.raises(ValueError):
        f.minimal_pdf("a (parenthesis)")
