"""Submission tooling: turn train_gpt.py logs into a records folder, and check one.

    python -m submissions.make --name NAME --logs logs/a.txt logs/b.txt logs/c.txt [--reference DIR]
    python -m submissions.check submissions/<date>_<NAME>

logs.py parses a train_gpt.py log (the source it embeds, then one line per event); make.py writes
README.md, submission.json, the logs, train_gpt.py (byte-identical to the embedded source),
requirements.txt and a loss plot, taking every number from the logs; check.py re-derives the numbers
and prints a PASS/FAIL table, also for folders in the official records layout.
"""
