"""The README's code blocks, read from README.md itself so a test runs exactly what it shows."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block under the README section titled ``heading``."""
    text = README.read_text()
    section = text[text.index(f"## {heading}\n") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def custom_strategy_definitions() -> dict:
    """The namespace of the "Writing your own strategy" snippet up to its first use."""
    code = python_block("Writing your own strategy")
    namespace: dict = {}
    exec(code[: code.index("\nes = ")], namespace)  # noqa: S102 - the README's own code
    return namespace
