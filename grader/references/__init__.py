"""References the hidden tests compare against, one module per notebook (``nb01``, ``nb02``, ...).

They live with the grader, which runs them in the trusted judge process: the sandbox that runs a
student's code sees the ``ioi_anomalies`` package but not this directory, so no graded answer can
be imported from what the student runs (``tests/test_references.py`` checks that the package
defines none of these functions). Each reference is written for clarity, not speed.
"""
