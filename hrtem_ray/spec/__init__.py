"""The study spec: typed spec classes and shared types (``types``), YAML loading, validation and pre-compute checks (``config``). Pydantic only."""
