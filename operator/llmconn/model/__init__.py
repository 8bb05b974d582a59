"""What a connection is and what a verdict says: the spec as pydantic models, reasons, the
verdict, the status it becomes, lifecycle dates, and redaction. Data and pure functions, no
network and no Kubernetes: the CLI and the operator share all of it."""
