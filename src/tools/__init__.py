"""Applications over the inverse engine (src/inverse) and a trained prior.

MRI reconstruction (``src.reconstruct``), restoration (``src.restore``) and anomaly maps (``src.anomaly``). Each
has a library API with keyword arguments (``Reconstructor`` / ``reconstruct_file``, ``Restorer`` /
``restore_file``, ``Detector`` / ``screen_file``); the CLIs only parse options into it. Files are read and
written by ``src.fileio``; PSNR/SSIM/NMSE come from ``src.tools.quality``.
"""
