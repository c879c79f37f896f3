"""Latent diffusion: stage 1 trains an autoencoder (``stage=autoencoder``), stage 2 diffuses in its frozen,
scaled latent space (``latent.autoencoder=PATH``). See README "Latent diffusion" and docs/latent.md."""
