"""MRI reconstruction: centred FFTs, fastMRI masks, coil operators, I/O, metrics and the Reconstructor."""
