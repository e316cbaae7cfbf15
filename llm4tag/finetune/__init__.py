"""Long-term knowledge injection (paper section 3.3.1, LSKI; section 3.4, the calibrator's D'):
training data from annotations and feedback, LoRA fine-tuning, adapter manifests and retraining.

Nothing here imports torch, peft or Ray at module level: the CLI and the config load it cheaply.
"""
