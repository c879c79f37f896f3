"""Applications over the inverse engine (src/inverse) and a trained prior: MRI reconstruction (src.reconstruct), restoration (src.restore), anomaly maps (src.anomaly)."""
