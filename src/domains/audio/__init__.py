"""Audio waveforms: folders of wav/flac/ogg, shards, or built-in synthetic sounds; WAV samples; vocoders."""

from src.domains.registry import Domain

DOMAIN = Domain(
    name="audio",
    datamodule="src.domains.audio.data:AudioDataModule",
    media="src.domains.audio.media:AudioMedia",
    metrics="src.domains.audio.metrics:AudioMetrics",
    shard_codec="src.domains.audio.data",
    description="1-D waveforms (C, L), written as WAV",
    # vocoder checkpoints: resynthesise this file from its log-mel (python -m src.sample mel_from=FILE.wav)
    sample_options={"mel_from": None},
    sample_input="src.domains.audio.sampling:sample_input",
)
