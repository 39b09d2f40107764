"""embslim pipeline: prune, compress, fine-tune, export, validate."""
