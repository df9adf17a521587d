"""Reports read from run folders after (or while) they train: a run's report, sweep summaries with
seed intervals, and the statistics behind them.

May import run (to read its files: metrics.csv, the lock, status.json); nothing below imports report.
"""
