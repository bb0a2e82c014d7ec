"""ampo: Active Multi-Preference Optimization of language models.

On-policy self-play rounds: sample many responses per prompt, score and embed them, actively
select a small informative group (best response + k negatives), and train with a
multi-preference loss.
"""

__version__ = "0.1.0"
