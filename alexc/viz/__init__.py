"""Pictures and tables: training curves, filters, activations, confusion matrices (plot.py),
the network diagram (diagram.py) and the summary table (summary.py)."""
