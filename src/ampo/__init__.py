"""ampo: Active Multi-Preference Optimization of language models.

On-policy self-play rounds: sample many responses per prompt, score and embed them, actively
select a small informative group (best response + k negatives), and train with a
multi-preference loss.
"""

import os

# Intel MKL (torch's CPU BLAS) may round a matmul differently depending on where its buffers lie in
# memory, so a stage redone later in a process could differ from the first run in the last bits.
# Conditional numerical reproducibility ("AUTO": the fastest code path this CPU has) removes that;
# set before the first matmul. A user's own MKL_CBWR wins.
os.environ.setdefault("MKL_CBWR", "AUTO")

__version__ = "0.1.0"
