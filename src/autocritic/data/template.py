"""The one prompt template shared by training data, generation and inference scoring.

A template is a format string with `{prompt}` and, at its very end, `{response}`; the scored sequence is
`render_prompt(prompt) + response`, so the critic sees at inference exactly what it saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autocritic.errors import ConfigError

RESPONSE_FIELD = "{response}"


@dataclass(frozen=True)
class Template:
    text: str = "{prompt}{response}"

    def __post_init__(self):
        if "{prompt}" not in self.text or not self.text.endswith(RESPONSE_FIELD):
            raise ConfigError(
                f"data.template={self.text!r} must contain {{prompt}} and end with {{response}}, e.g. "
                "'Question: {prompt}\\nAnswer: {response}'."
            )

    def render_prompt(self, prompt: str) -> str:
        return self.text[: -len(RESPONSE_FIELD)].replace("{prompt}", prompt)

    def render(self, prompt: str, response: str) -> str:
        return self.render_prompt(prompt) + response


def read_template_file(path: str | Path) -> str:
    """A template written in a file, exactly (newlines, colons and braces need no quoting); one final newline, which
    editors add, is dropped so that the text still ends with {response}."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"data.template_file={str(path)!r} is not a file: write the template into a text file.")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"data.template_file={str(path)!r} is not UTF-8 text.") from None
    text = text.removesuffix("\n").removesuffix("\r")
    return Template(text).text
