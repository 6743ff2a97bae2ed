"""Callbacks for training frameworks: thin adapters from a framework's hooks to the Tracker's calls.

Each module imports its framework; import the one you use:
`dataaudit.integrations.lightning` (PyTorch Lightning), `dataaudit.integrations.transformers`
(the Hugging Face Trainer, with Accelerate's prepared loaders).
"""
