"""nbgrader configuration: solutions/ is the source, notebooks/ the release (see grader/)."""

import os

c = get_config()  # noqa: F821
_root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.root = _root
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = os.path.join("grader", "course", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("grader", "course", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("grader", "course", "feedback")
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(_root, "grader", "course", "gradebook.db")
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.enforce_metadata = True
c.Execute.timeout = 300
