"""Few-step students: ``python -m src.train stage=distill distill.teacher=CKPT distill.method=consistency|progressive``
distils any trained diffusion checkpoint (every domain and objective, pixel or latent) into a 1-4 step student
(docs/guide/distillation.md)."""
