"""The training runtime: what runs around the engine during ``src.train``, whatever the domain.

``callbacks`` (EMA samples, throughput, run config in checkpoints), ``preemption`` (signals, last checkpoint,
requeue), ``runlog`` and ``runfolder`` (the run's log and folder), ``metrics_log`` (``RUN_DIR/metrics.jsonl``),
``threads`` (CPU thread budget), ``distributed`` (DDP/FSDP2 strategies, sharded checkpoints), ``ema`` and
``phema`` (EMA and post-hoc EMA of the weights). Media writers and metrics arrive as built objects from the
entry point, so nothing here imports a domain.
"""
