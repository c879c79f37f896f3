"""Images: folders of png/jpg, webdataset shards of them, or built-in synthetic shapes; PNG samples."""

from src.domains.registry import Domain

DOMAIN = Domain(
    name="image",
    datamodule="src.domains.image.data:ImageDataModule",
    media="src.domains.image.media:ImageMedia",
    metrics="src.domains.image.metrics:ImageMetrics",
    shard_codec="src.domains.image.data",
    description="2-D images (C, H, W), written as PNG",
)
