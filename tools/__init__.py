"""The project's tools, outside what students import: the expected-output pages (``tools.report``),
the model demo (``tools.demo``), the benchmarks (``tools.bench``), the embedded model's training
(``tools.train_embedded``) and model card (``tools.model_card``), the student's JupyterLab
(``tools.lab``) and the student hand-out (``tools.handout``), each run as ``python -m tools.<name>``
(or its make target); and the hook factory the project's own experiments share (``tools.hooks``)."""
