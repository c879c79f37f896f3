"""One diffusion training engine for images, audio waveforms and MRI volumes."""
