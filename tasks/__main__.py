"""``python -m lmms_rekv.tasks`` prints the folder to pass to ``lmms-eval --include_path``."""

import os

print(os.path.dirname(os.path.abspath(__file__)))
