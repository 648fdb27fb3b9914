import sys
from pathlib import Path

# Lets tests import the mpmath reference helper that lives beside them.
sys.path.insert(0, str(Path(__file__).parent))
