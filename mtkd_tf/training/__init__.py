"""Training one MT-DNN: the paper's optimiser and schedule (`train`), exact resume (`checkpointing`),
stop requests (`preemption`), strategies and precision (`distribute`), and MT-DNN's second stage,
per-task fine-tuning (`finetune`)."""
