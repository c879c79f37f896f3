"""A fourth domain defined entirely inside the test folder: 1-D time series of noisy sines.

Enabled with ``DIFFUSION_DOMAINS=tests.toy_domain``; it reuses the 1-D DiffWave backbone, writes samples
as CSV and scores them by their dominant frequency. Nothing outside ``tests/`` knows it exists.
"""

from pathlib import Path

from src.domains.registry import Domain

DOMAIN = Domain(
    name="toy",
    datamodule="tests.toy_domain.data:SineDataModule",
    media="tests.toy_domain.media:CsvMedia",
    metrics="tests.toy_domain.metrics:SineMetrics",
    config_dir=str(Path(__file__).resolve().parent / "conf"),
    description="1-D noisy sines (C, L), written as CSV",
)
