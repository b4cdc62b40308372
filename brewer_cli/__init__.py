"""brewer: knowledge distillation for NLP models, driven by experiment files."""

__version__ = "0.1.0"

import os as _os

# brewer shows its own progress; `datasets` would draw a bar for every small save, load and index
# flattening. The tokenizing map of a large split turns its bar back on (tasks/tokenized_cache.py).
_os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
