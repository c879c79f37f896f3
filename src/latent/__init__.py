"""Latent diffusion: stage 1 trains an autoencoder (``stage=autoencoder``), stage 2 diffuses in its frozen,
scaled latent space (``latent.autoencoder=PATH``). See docs/guide/latent.md and docs/design/latent.md."""
