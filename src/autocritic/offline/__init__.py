"""The offline default that learns: a generated world, a tiny Falcon pretrained on it, and critic data the
model writes about itself. Nothing here needs a hub.

On a CPU shared with other processes, OpenMP threads that spin while waiting for a descheduled sibling make
a 2-thread training step 2-8x slower (measured); passive waiting avoids that. It only takes effect if torch
has not been imported yet, so entry points should import this package (or set the variable) first.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
