"""nbgrader configuration: solutions/ is the source, notebooks/ the release (see grader/course.py).

The settings come from ``grader.course.configure``, the one place the project writes nbgrader's
configuration; ``nbgrader autograde`` run here grades in the sandbox, as ``make autograde`` does.
"""

c = get_config()  # noqa: F821
from grader.course import configure_repository  # noqa: E402

configure_repository(c)
