"""The history panel: every run ever made, searched, filtered and paged in from the run
history, with open, compare, re-run, branch, reveal and delete."""
