"""The validation core: a spec and its Secrets in, one probe of the registry, a redacted
verdict out (`validate.validate`). The operator and `llmconn validate` call the same code."""
