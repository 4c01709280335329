"""`optbench race`: a fair race between optimizers (docs/race.md).

Every optimizer is tuned over its own declared space with the same budget (trials x steps, the same Sobol
points), flagged when its choice sits at an edge of its range, rerun with paired seeds in rounds until every
comparison with the leader is resolved (with an error rate kept under the repeated looks), and compared on the
test set image by image; sensitivity and the ranking's robustness go on the same page.

The package, one module per concern:
  spaces.py       declared spaces (conf/race/spaces.yaml), Sobol points, edge flags, widened ranges
  budget.py       the ledger: trials, steps, seeds, FLOPs from the model's shape and the steps, wall time
  sequential.py   seeds in rounds: looks, O'Brien-Fleming alpha spending, Holm within a look
  testset.py      McNemar over the test images and the smallest difference the test set resolves
  sensitivity.py  width of the good region, share within epsilon, expected trials to get there
  robustness.py   rankings at earlier checkpoints, relaxed targets, other model shapes (Kendall's tau)
  running.py      the race's runs: one search per optimizer and study (optbench.search), seed rounds, shapes
  tables.py       the tables read back from the run directories
  page.py         race.md, race.html, lr.png
  command.py      the command line and race.yaml

Imports: torch, optuna, pandas and matplotlib inside the functions that use them (as in optbench.search), so
`optbench race --help` and a one-line error come without their start-up cost.
"""
