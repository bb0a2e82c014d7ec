"""The `ampo` command's commands, one module per group: `run` (run, demo, report), `pool` (generate,
score, embed, select), `train` (train, train-rm), `evaluate` (evaluate, make-prompts). Each is a
function of the parsed arguments; heavy libraries are imported inside it, so building the parser
(`ampo.cli`) stays light."""
