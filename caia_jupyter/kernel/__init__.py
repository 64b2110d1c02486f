"""The kernel surface: `%%federated`, `%federated` and the run widget."""
