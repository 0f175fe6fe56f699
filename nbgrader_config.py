"""nbgrader configuration: solutions/ is the source, notebooks/ the release (see grader/)."""

import os

c = get_config()  # noqa: F821
_root = os.path.dirname(os.path.abspath(__file__))
# the grader's course folder (gradebook, autograded notebooks); `python -m grader formgrader --course` sets it
_course = os.environ.get("IOI_GRADER_COURSE") or os.path.join(_root, "grader", "course")
c.CourseDirectory.root = _root
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = os.path.join(_course, "submitted")
c.CourseDirectory.autograded_directory = os.path.join(_course, "autograded")
c.CourseDirectory.feedback_directory = os.path.join(_course, "feedback")
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(_course, "gradebook.db")
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.enforce_metadata = True
# the project's execution settings, shared with `make validate` and the Validate button
from ioi_anomalies.validate import apply_execution_settings  # noqa: E402

apply_execution_settings(c)
