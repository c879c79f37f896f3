"""MRI: NIfTI/DICOM volumes or slices, shards, or built-in head phantoms; NIfTI samples; no-network metrics."""

from src.domains.registry import Domain

DOMAIN = Domain(
    name="mri",
    datamodule="src.domains.mri.datamodules:mri_datamodule",
    media="src.domains.mri.media:MRIMedia",
    metrics="src.domains.mri.metrics:MRIMetrics",
    shard_codec="src.domains.mri.shards",
    description="3-D volumes (C, D, H, W) or 2-D slices, written as NIfTI",
)
