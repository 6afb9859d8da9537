"""The bottom layer: machine description, timing, peak memory and atomic JSON I/O, used by every
layer that measures or writes results (bench, training, experiments, report, cli)."""
