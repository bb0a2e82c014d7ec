"""Instruction following with verifiable constraints (IFEval, IFBench): offline benchmark data and
official checks (`bench`, `offline`, `scoring`), evaluation of responses or policies (`evaluate`),
the `ifeval` training reward (`reward`) and the training-prompt builder (`prompts`).

See docs/ifeval.md.
"""
