"""Chat templates rendered in a sandbox: a template inside a GGUF or tokenizer_config.json is untrusted input.

    tpl = ChatTemplate(source, bos_token="<s>", eos_token="</s>", where="model.gguf")
    prompt = tpl.render([{"role": "user", "content": "Hi"}])   # add_generation_prompt=True

The environment is jinja2's ``ImmutableSandboxedEnvironment`` with the helpers Hugging Face templates
expect (``raise_exception``, ``strftime_now``, ``tojson``). A template that reaches for Python internals
(``''.__class__.__mro__``), mutates its inputs, or renders more than :data:`MAX_PROMPT_CHARS` characters
raises :class:`ChatTemplateError`, a one-line typed error.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Sequence

from ..errors import ArtifactError

# A template loop can expand a short history into gigabytes; no real prompt comes near this.
MAX_PROMPT_CHARS = 2_000_000

# Used when an artifact carries no template (base models such as Gemma3-270M): a plain transcript the
# model can continue, instead of refusing to chat at all.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% else %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class ChatTemplateError(ArtifactError):
    """The artifact's chat template does not parse, is unsafe, or fails while rendering."""


class _TemplateRaised(Exception):
    """raise_exception() called by the template itself (e.g. 'roles must alternate')."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(str(message))


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return _dt.datetime.now().strftime(fmt)


def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # trim_blocks / lstrip_blocks: what Hugging Face renders with, so whitespace matches training
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled, sandboxed chat template and the special tokens it may refer to."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "", where: str = "artifact"):
        from jinja2 import TemplateError

        self.where = where
        self.builtin = not source
        self.source = source or PLAIN_TEMPLATE
        self.bos_token, self.eos_token = bos_token or "", eos_token or ""
        if not isinstance(self.source, str):
            raise ChatTemplateError(f"{where}: chat template is a {type(self.source).__name__}, not text")
        try:
            self._template = _environment().from_string(self.source)
        except TemplateError as e:
            raise ChatTemplateError(f"{where}: chat template does not parse ({_one_line(e)})") from None

    def render(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages``; every failure is a ChatTemplateError naming the artifact."""
        from jinja2 import TemplateError
        from jinja2.exceptions import SecurityError

        parts: list[str] = []
        size = 0
        try:
            stream = self._template.generate(messages=[dict(m) for m in messages], bos_token=self.bos_token,
                                             eos_token=self.eos_token, add_generation_prompt=add_generation_prompt)
            for piece in stream:
                size += len(piece)
                if size > MAX_PROMPT_CHARS:
                    raise ChatTemplateError(f"{self.where}: chat template renders more than {MAX_PROMPT_CHARS:,} "
                                            "characters; refusing it")
                parts.append(piece)
        except SecurityError as e:
            raise ChatTemplateError(f"{self.where}: unsafe chat template refused by the sandbox ({_one_line(e)})") \
                from None
        except _TemplateRaised as e:
            raise ChatTemplateError(f"{self.where}: chat template raised: {_one_line(e)}") from None
        except TemplateError as e:
            raise ChatTemplateError(f"{self.where}: chat template failed ({_one_line(e)})") from None
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, RecursionError) as e:
            # Python errors raised from inside the template's own expressions
            raise ChatTemplateError(f"{self.where}: chat template failed ({type(e).__name__}: {_one_line(e)})") \
                from None
        return "".join(parts)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
