"""The package's test fixtures, shared with the studies' tests (`make test` runs both: pyproject's testpaths)."""

from tests.conftest import tiny_checkpoint, tiny_prepared  # noqa: F401
from tests.test_bench import onnx_exports  # noqa: F401
