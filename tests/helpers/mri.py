"""Small MRI files written inside tests: NIfTI volumes and DICOM series with (fake) patient fields."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from src.domains.mri.phantoms import head_phantom

FAKE_PATIENT = "Doe^Janet"
FAKE_PATIENT_ID = "PID-556677"
FAKE_DATE = "19700321"


def write_nifti(
    path: Path, data: np.ndarray, spacing=(2.0, 2.0, 2.0), affine: np.ndarray | None = None
) -> Path:
    if affine is None:
        affine = np.diag([*spacing, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def phantom(shape=(24, 24, 24), seed=0, complex_valued=False) -> np.ndarray:
    return head_phantom(shape, seed=seed, complex_valued=complex_valued)


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    spacing=(2.0, 2.0, 2.0),
    patient=FAKE_PATIENT,
    series_uid: str | None = None,
    pixel_spacings: list | None = None,
    positions: list | None = None,
) -> Path:
    """One axial DICOM file per slice of ``volume`` (x, y, z), with patient fields set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    scaled = np.round(volume / max(float(volume.max()), 1e-6) * 1000).astype(np.uint16)
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.StudyDate = (
            patient,
            FAKE_PATIENT_ID,
            FAKE_DATE,
            FAKE_DATE,
        )
        ds.Modality = "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.InstanceNumber = k + 1
        ps = pixel_spacings[k] if pixel_spacings else [spacing[1], spacing[0]]
        ds.PixelSpacing = [float(v) for v in ps]
        z = positions[k] if positions else k * spacing[2]
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        # columns run along +x and rows along +y of the RAS array: -x and -y in DICOM's LPS patient axes
        ds.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(scaled[:, :, k].T).tobytes()  # rows are y, columns are x
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return folder
