"""Every example in README.md and docs/api.md runs against the committed model, in-process.

The examples are read out of the Markdown, never copied here, so the docs are what is
tested: an answer they show that the model or the service does not give fails CI. Three
forms are examples:

1. a `curl` command in a `sh` block, with the response it prints in the `#` comment lines
   right below it (a problem+json body means its own `status`, any other body 200);
2. a `json` block holding a `POST /v1/categorize` body, followed by a paragraph that starts
   with `→ `STATUS BODY``, or with `→ `STATUS`` and then the body in the next `json` block;
3. inline in a paragraph: `` `BODY` → `RESPONSE` ``, to `POST /v1/categorize`, 200 unless
   the response starts with a status.

Every `json` block and every `→` in these files must belong to an example, and every `curl`
must show its response: an example in another form fails here instead of going untested.

Two things in an answer the docs may leave out or shorten, and only these: a problem's
`request_id`, generated per request (it must be in the answer; the docs show one where
the request sends its X-Request-ID, and then it must match), and the digits of a number
(a documented 0.96 matches any answer that rounds to it: probabilities have 17 digits).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from service.settings import Settings
from tests.conftest import Client
from tests.datasets import ROOT

DOCS = ("README.md", "docs/api.md")
COMMITTED_MODEL = ROOT / "artifacts" / "model.onnx"
ARROW = "→"
CATEGORIZE = "/v1/categorize"
JSON = "application/json"
PROBLEM = "application/problem+json"
SHELLS = {"sh", "shell", "bash", "console"}


class DocFormError(AssertionError):
    """The docs hold something that looks like an example but is in none of the forms."""


@dataclass(frozen=True)
class Example:
    where: str  # file:line of the request
    body: bytes
    status: int
    response: Any  # the JSON the docs show
    method: str = "POST"
    path: str = CATEGORIZE
    headers: Dict[str, str] = field(default_factory=lambda: {"Content-Type": JSON})


# --- Reading the Markdown -------------------------------------------------------------------


def line_of(token: Token, offset: int = 0) -> int:
    return (token.map[0] if token.map else 0) + 1 + offset


class Shown(float):
    """A number as the docs show it: an answer matches it once rounded to as many decimals."""

    decimals: Optional[int]  # None: in exponent form, compared exactly


def shown_number(text: str) -> Shown:
    number = Shown(text)
    digits = text.partition(".")[2]
    number.decimals = None if "e" in text.lower() else len(digits)
    return number


def loads(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_float=shown_number)
    except ValueError as error:
        raise DocFormError(f"{where}: not JSON ({error}): {text!r}") from error


def matches(shown: Any, answer: Any) -> bool:
    """The answer is what the docs show, numbers to the decimals shown."""
    if isinstance(shown, Shown) and shown.decimals is not None:
        return isinstance(answer, (int, float)) and round(answer, shown.decimals) == shown
    if isinstance(shown, dict):
        return (
            isinstance(answer, dict)
            and shown.keys() == answer.keys()
            and all(matches(value, answer[key]) for key, value in shown.items())
        )
    if isinstance(shown, list):
        return isinstance(answer, list) and len(shown) == len(answer) and all(map(matches, shown, answer))
    if isinstance(shown, bool) or isinstance(answer, bool):
        return shown is answer  # json's true is not 1
    return bool(shown == answer)


def status_and_body(code: str, where: str) -> Tuple[int, Optional[Any]]:
    """`200 {...}` or `400` or a bare body (status 200)."""
    found = re.fullmatch(r"(\d{3})(?:\s+(.*))?", code.strip(), re.DOTALL)
    if found is None:
        return 200, loads(code, where)
    body = found.group(2)
    return int(found.group(1)), None if body is None else loads(body, where)


def incomplete(command: str) -> bool:
    """A shell command continues on the next line: a trailing backslash or an open quote."""
    if command.rstrip().endswith("\\"):
        return True
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return True
    return False


def shell_commands(block: str) -> Iterator[Tuple[int, str, List[str]]]:
    """(line in the block, command, the `#` comment lines right below it) per command."""
    commands: List[Tuple[int, str, List[str]]] = []
    for number, line in enumerate(block.splitlines()):
        if commands and not commands[-1][2] and incomplete(commands[-1][1]):
            start, command, _ = commands[-1]
            commands[-1] = (start, command + "\n" + line, [])
        elif line.lstrip().startswith("#"):
            if commands:
                commands[-1][2].append(line.lstrip()[1:].strip())
        elif line.strip():
            commands.append((number, line, []))
    yield from commands


def curl_request(words: List[str], where: str) -> Dict[str, Any]:
    """The request of a curl command, for the options the docs use; any other fails."""
    request: Dict[str, Any] = {"headers": {}}
    args = iter(words[1:])
    for word in args:
        if word in ("-s", "--silent", "-S", "--show-error"):
            continue
        if word in ("-H", "--header"):
            name, _, value = next(args).partition(":")
            request["headers"][name.strip()] = value.strip()
        elif word in ("-d", "--data", "--data-raw", "--data-binary"):
            request["body"] = next(args).encode()
        elif word in ("-X", "--request"):
            request["method"] = next(args)
        elif word.startswith("-"):
            raise DocFormError(f"{where}: curl option {word} is not one this test knows")
        else:
            url = urlsplit(word if "://" in word else "http://" + word)
            request["path"] = url.path + (f"?{url.query}" if url.query else "")
    request.setdefault("method", "POST" if "body" in request else "GET")
    return request


def curl_examples(token: Token, name: str) -> Iterator[Example]:
    for start, command, comments in shell_commands(token.content):
        words = shlex.split(command.replace("\\\n", " "), comments=True)
        if not words or words[0] != "curl":
            continue
        where = f"{name}:{line_of(token, start + 1)}"
        if not comments:
            raise DocFormError(f"{where}: a curl command that shows no response")
        response = loads("\n".join(comments), where)
        problem = isinstance(response, dict) and response.keys() >= {"type", "title", "status"}
        status = response["status"] if problem else 200
        request = curl_request(words, where)
        yield Example(where, request.pop("body", b""), status, response, **request)


def fence_example(tokens: List[Token], i: int, name: str) -> Tuple[Example, int]:
    """The example a request's `json` block starts, and how many tokens it takes."""
    where = f"{name}:{line_of(tokens[i], 1)}"
    body = tokens[i].content.strip()
    loads(body, where)
    after = tokens[i + 1] if i + 1 < len(tokens) else None
    codes = [c for c in (after.children or []) if c.type == "code_inline"] if after else []
    if after is None or after.type != "inline" or not after.content.startswith(ARROW) or not codes:
        raise DocFormError(f"{where}: a json block that is no request followed by `{ARROW} ...`")
    status, response = status_and_body(codes[0].content, where)
    if response is not None:
        return Example(where, body.encode(), status, response), 2
    shown = tokens[i + 2] if i + 2 < len(tokens) else None
    if shown is None or shown.type != "fence" or shown.info != "json":
        raise DocFormError(f"{where}: `{ARROW} {status}` with no json block of the response after it")
    return Example(where, body.encode(), status, loads(shown.content, where)), 3


def inline_examples(token: Token, name: str) -> Iterator[Example]:
    """`` `BODY` → `RESPONSE` `` pairs; an arrow in the text between anything else fails."""
    children = token.children or []
    where = f"{name}:{line_of(token)}"
    for n, child in enumerate(children):
        if child.type != "text" or ARROW not in child.content:
            continue
        around = [c.type for c in children[max(n - 1, 0) : n + 2]]
        if around != ["code_inline", "text", "code_inline"] or child.content.strip() != ARROW:
            raise DocFormError(f"{where}: an {ARROW} that is not between a request and a response")
        body = children[n - 1].content
        loads(body, where)
        status, response = status_and_body(children[n + 1].content, where)
        yield Example(where, body.encode(), status, response)


def parse_examples(text: str, name: str) -> List[Example]:
    """Every example of a Markdown document, in order; DocFormError for one in no known form."""
    tokens = [t for t in MarkdownIt("commonmark").parse(text) if t.type in ("fence", "inline")]
    examples: List[Example] = []
    i = 0
    while i < len(tokens):
        token, taken = tokens[i], 1
        if token.type == "fence" and token.info in SHELLS:
            examples += curl_examples(token, name)
        elif token.type == "fence" and token.info == "json":
            example, taken = fence_example(tokens, i, name)
            examples.append(example)
        elif token.type == "inline" and ARROW in token.content:
            examples += inline_examples(token, name)
        i += taken
    return examples


# --- Running them -------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The docs describe the committed model, whatever MODEL_PATH points other tests at.
    return dataclasses.replace(settings, model_path=str(COMMITTED_MODEL))


async def mismatch(client: Client, example: Example) -> Optional[str]:
    """None when the service answers what the docs show, else what it answered instead."""
    response = await client.request(example.method, example.path, data=example.body, headers=example.headers)
    content_type = PROBLEM if example.status >= 400 else JSON
    body = await response.json(content_type=None)
    answer = (response.status, response.content_type, body)
    if example.status >= 400 and isinstance(body, dict) and "request_id" not in example.response:
        # Generated per request: the docs leave it out, but every problem carries one.
        if not isinstance(body.get("request_id"), str) or not body["request_id"]:
            return f"{example.where}: the problem carries no request_id: {answer}"
        body = {key: value for key, value in body.items() if key != "request_id"}
    if (response.status, response.content_type) == (example.status, content_type) and matches(
        example.response, body
    ):
        return None
    return f"{example.where}: the docs show {example.status} {example.response}, the service answers {answer}"


def doc_examples(name: str) -> List[Example]:
    return parse_examples((ROOT / name).read_text(encoding="utf-8"), name)


@pytest.mark.parametrize("name", DOCS)
async def test_every_example_answers_as_shown(client: Client, name: str) -> None:
    examples = doc_examples(name)
    assert examples, f"no example found in {name}: has the parser stopped recognising them?"
    wrong = [m for m in [await mismatch(client, e) for e in examples] if m is not None]
    assert wrong == []


def falsified(example: Example, labels: Tuple[str, ...]) -> Optional[Example]:
    """The example with an answer the service does not give: each category swapped for
    another, or a problem's detail changed; None for an answer of neither kind."""
    shown = example.response if isinstance(example.response, dict) else {}
    if shown.get("categories"):
        other = [next(label for label in labels if label != c) for c in shown["categories"]]
        return dataclasses.replace(example, response={**shown, "categories": other})
    if "detail" in shown:
        return dataclasses.replace(example, response={**shown, "detail": shown["detail"] + "!"})
    return None


async def test_a_wrong_answer_fails(client: Client, model_labels: Tuple[str, ...]) -> None:
    # The doc test can fail: a documented answer the service does not give is caught.
    wrong = [falsified(e, model_labels) for name in DOCS for e in doc_examples(name)]
    checked = [e for e in wrong if e is not None]
    assert len(checked) >= len(DOCS) * 2, "fewer documented answers than expected to falsify"
    for example in checked:
        assert await mismatch(client, example) is not None, example.where


# --- The reader itself --------------------------------------------------------------------

SAMPLE = """\
```sh
make run  # a command that is no example
curl -s localhost:8080/v1/categorize -H 'Content-Type: application/json' \\
  -d '{"products": [{"title": "a"},
                    {"title": "b"}]}'
# {"categories": ["X", "Y"]}
curl -s localhost:8080/healthz
# "ok"
```

```json
{"products": [{"title": " "}]}
```
→ `400`:
```json
{"type": "about:blank", "title": "Invalid request", "status": 400}
```

```json
{"products": [{"title": "c"}]}
```
→ `200 {"categories": ["Z"]}`: one per product.

- `{"products": []}` → `{"categories": []}` (no model call).
"""


def test_reader_finds_every_form() -> None:
    found = [
        (e.where, e.method, e.path, json.loads(e.body or b"null"), e.status)
        for e in parse_examples(SAMPLE, "s")
    ]
    assert found == [
        ("s:3", "POST", CATEGORIZE, {"products": [{"title": "a"}, {"title": "b"}]}, 200),
        ("s:7", "GET", "/healthz", None, 200),
        ("s:12", "POST", CATEGORIZE, {"products": [{"title": " "}]}, 400),
        ("s:20", "POST", CATEGORIZE, {"products": [{"title": "c"}]}, 200),
        ("s:24", "POST", CATEGORIZE, {"products": []}, 200),
    ]
    responses = [e.response for e in parse_examples(SAMPLE, "s")]
    assert responses[0] == {"categories": ["X", "Y"]}
    assert responses[2]["status"] == 400
    assert responses[4] == {"categories": []}


def test_numbers_match_to_the_decimals_shown() -> None:
    shown = loads('{"p": [0.96, 1, 0.5e-3], "ok": true}', "s")
    assert matches(shown, {"p": [0.9581, 1, 0.0005], "ok": True})
    assert not matches(shown, {"p": [0.9549, 1, 0.0005], "ok": True})  # rounds to 0.95
    assert not matches(shown, {"p": [0.96, 1.0001, 0.0005], "ok": True})  # integers are exact
    assert not matches(shown, {"p": [0.96, 1, 0.00051], "ok": True})  # so are exponents
    assert not matches(shown, {"p": [0.96, 1, 0.0005], "ok": 1})  # true is not 1
    assert not matches(shown, {"p": [0.96, 1], "ok": True})
    assert not matches(shown, {"p": [0.96, 1, 0.0005], "ok": True, "more": 1})


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"products": []}\n```\nanswers `{"categories": []}`\n',  # no arrow after it
        '```json\n{"categories": []}\n```\n',  # a lone response
        "```sh\ncurl -s localhost:8080/healthz\n```\n",  # no response shown
        "```sh\ncurl -k https://localhost:8080/healthz\n# ok\n```\n",  # an option it cannot honour
        "the `title` → its category\n",  # an arrow between no JSON
        '```json\n{"products": []}\n```\n→ `200`\n',  # status, but no body after it
    ],
)
def test_reader_refuses_what_it_cannot_run(text: str) -> None:
    with pytest.raises(DocFormError):
        parse_examples(text, "s")
