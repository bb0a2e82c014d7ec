"""Instruction following with verifiable constraints (IFEval, IFBench): offline benchmark data and
official checks (`bench`, `offline`, `scoring`), evaluation of responses or policies (`evaluate`)
and the training-prompt builder (`prompts`). The `ifeval` training reward is `ampo.rewards.ifeval`.

See docs/ifeval.md.
"""
