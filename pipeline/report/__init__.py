"""From trial results to answers: claim-12 selection, seeds and intervals, Table 1, plots, convergence, the evaluate stage."""
